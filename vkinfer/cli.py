"""The `vkinfer` command: `vkinfer [--device D] [-v] <command> ...`.

Every VkInferError becomes one line `vkinfer: error: <message>` on stderr and exit status 1;
Ctrl-C exits 130 without a traceback."""
import argparse
import logging
import sys

from .errors import VkInferError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="vkinfer: %(levelname)s: %(message)s")
    try:
        return args.run(args) or 0
    except VkInferError as e:
        print(f"vkinfer: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vkinfer", description="Run GGUF Mamba and ZAYA1 models on any Vulkan GPU.")
    add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    devices = commands.add_parser("devices", help="list Vulkan devices and the limits vkinfer uses")
    add_global_options(devices, defaults=False)
    devices.set_defaults(run=cmd_devices)

    info = commands.add_parser("info", help="describe a GGUF model: hyper-parameters, tensors, memory")
    info.add_argument("model", help="path to a .gguf file")
    info.add_argument("-c", "--ctx", type=int, default=4096, help="context for the memory estimate")
    add_global_options(info, defaults=False)
    info.set_defaults(run=cmd_info)
    return parser


def add_global_options(parser: argparse.ArgumentParser, defaults: bool):
    """--device and -v are accepted before and after the command; the copy on a subcommand has
    no default, so it does not overwrite a value given before the command."""
    parser.add_argument("--device", metavar="D", default=None if defaults else argparse.SUPPRESS,
                        help="Vulkan device: index or part of its name "
                             "(default: $VKINFER_DEVICE, else 0)")
    parser.add_argument("-v", "--verbose", action="count",
                        default=0 if defaults else argparse.SUPPRESS, help="log more (-vv: debug)")


def cmd_devices(args) -> int:
    from .gpu.device import choose_device_index
    from .gpu.vulkan_info import query_devices

    devices = query_devices()
    selected = choose_device_index(args.device)
    for d in devices:
        local = [size for size, is_local in d.heaps if is_local]
        print(f"{'*' if d.index == selected else ' '} {d.index}: {d.name}")
        rows = [
            ("type", d.device_type),
            ("driver", d.driver),
            ("Vulkan API", d.api_version),
            ("device-local heaps", ", ".join(format_bytes(s) for s in local) or "none"),
            ("maxStorageBufferRange",
             f"{d.max_storage_buffer_range} ({format_bytes(d.max_storage_buffer_range)})"),
            ("maxComputeWorkGroupCount", " x ".join(map(str, d.max_compute_work_group_count))),
            ("maxComputeWorkGroupInvocations", str(d.max_compute_work_group_invocations)),
            ("subgroup size", str(d.subgroup_size) if d.subgroup_size else "unknown"),
        ]
        for label, value in rows:
            print(f"    {label + ':':32}{value}")
    print(f"(* = selected device)  kp barrier fix: {kp_barrier_fix()}")
    return 0


def cmd_info(args) -> int:
    from dataclasses import asdict
    from .gguf import memory_estimate, open_gguf

    f = open_gguf(args.model)
    print(f"{f.path.name}: {f.arch}, {f.n_params() / 1e6:.1f}M parameters, "
          f"{format_bytes(f.weight_bytes())} of weights, GGUF v{f.get('GGUF.version')}")
    print("hyper-parameters:")
    for key, value in asdict(f.params).items():
        print(f"    {key + ':':32}{value}")
    print(f"tensors: {len(f.tensors)}")
    for qtype, (count, nbytes) in f.bytes_by_type().items():
        print(f"    {qtype + ':':32}{count:5d} tensors, {format_bytes(nbytes)}")
    tokens = f.get("tokenizer.ggml.tokens")
    print(f"vocabulary: {f.n_vocab} rows in token_embd, {len(tokens) if tokens else 0} tokens, "
          f"tokenizer model {f.get('tokenizer.ggml.model', 'none')!r}"
          f" (pre-tokenizer {f.get('tokenizer.ggml.pre', 'default')!r})")
    print(f"chat template: {'present' if f.get('tokenizer.chat_template') else 'none'}")
    mem = memory_estimate(f, args.ctx)
    print(f"device memory at context {args.ctx}: " +
          ", ".join(f"{k} {format_bytes(v)}" for k, v in mem.items()))
    return 0


def kp_barrier_fix() -> str:
    try:
        import kp
    except ImportError as e:
        return f"kp is not importable ({e})"
    if getattr(kp, "vkinfer_compute_barrier", 0):
        return "yes"
    return "no (stock kp: slower OpTensorSyncLocal barriers; run ./setup.sh to rebuild kp)"


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


if __name__ == "__main__":
    sys.exit(main())
