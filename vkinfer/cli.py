"""The `vkinfer` command: `vkinfer [--device D] [-v] <command> ...`.

Every VkInferError becomes one line `vkinfer: error: <message>` on stderr and exit status 1;
Ctrl-C exits 130 without a traceback, SIGTERM 143 (both through the code's `finally` blocks, so
convert and quantize leave no partial file); a reader that stops early (`| head`) ends it quietly."""
import argparse
import logging
import signal
import sys

from .errors import VkInferError


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:            # the program itself, not a caller in this process (the tests)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="vkinfer: %(levelname)s: %(message)s")
    try:
        return args.run(args) or 0
    except VkInferError as e:
        print(f"vkinfer: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader has gone: point stdout at nothing so that the exit's flush cannot fail too.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vkinfer", description="Run GGUF Mamba and ZAYA1 models on any Vulkan GPU.")
    add_global_options(parser, defaults=True)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"vkinfer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    devices = commands.add_parser("devices", help="list Vulkan devices and the limits vkinfer uses")
    devices.add_argument("--json", action="store_true", help="the same facts as one JSON object")
    add_global_options(devices, defaults=False)
    devices.set_defaults(run=cmd_devices)

    run = commands.add_parser("run", help="continue a prompt and stream the text")
    run.add_argument("model", nargs="?", help="GGUF file (default: the bundled demo model)")
    run.add_argument("-p", "--prompt", default="", help="text to continue")
    run.add_argument("-f", "--file", default=None, help="read the prompt from a file (- for stdin)")
    run.add_argument("-e", "--escape", action="store_true", help="process \\n, \\t, \\\\ ... in the prompt")
    run.add_argument("-n", "--n-predict", type=int, default=64,
                     help="tokens to generate; -1 = until the context is full or the end of text")
    run.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    run.add_argument("--no-display-prompt", action="store_true", help="do not print the prompt first")
    run.add_argument("-sys", "--system-prompt", default=None,
                     help="answer the prompt as a chat turn, after this system message")
    run.add_argument("--chat-template-file", default=None, help="a Jinja chat template for -sys")
    add_model_options(run)
    add_global_options(run, defaults=False)
    run.set_defaults(run=cmd_run)

    chat = commands.add_parser("chat", help="talk with a model in the terminal")
    chat.add_argument("model", nargs="?", help="GGUF file (default: the bundled demo model)")
    chat.add_argument("-n", "--n-predict", type=int, default=256, help="most tokens per answer")
    chat.add_argument("-sys", "--system-prompt", "--system", dest="system", default=None, help="system message")
    chat.add_argument("--chat-template-file", default=None,
                      help="a Jinja chat template instead of the model's own")
    chat.add_argument("--reasoning", choices=("show", "hide"), default="show",
                      help="show <think> reasoning dimmed, or hide it")
    add_model_options(chat, CHATTY)
    add_global_options(chat, defaults=False)
    chat.set_defaults(run=cmd_chat)

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (many clients at once)")
    serve.add_argument("model", nargs="?", help="GGUF file (default: the bundled demo model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve.add_argument("-np", "--parallel", type=int, default=4,
                       help="sequence slots: requests decoded together (default 4)")
    serve.add_argument("--queue", type=int, default=None,
                       help="requests that may wait for a slot before the server answers 503 "
                            "(default 4 x slots)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    add_model_options(serve)
    add_global_options(serve, defaults=False)
    serve.set_defaults(run=cmd_serve)

    info = commands.add_parser("info", help="describe a GGUF model: hyper-parameters, tensors, memory")
    info.add_argument("model", help="path to a .gguf file")
    info.add_argument("-c", "--ctx", type=int, default=4096, help="context for the memory estimate")
    info.add_argument("--json", action="store_true", help="the same facts as one JSON object")
    add_global_options(info, defaults=False)
    info.set_defaults(run=cmd_info)
    add_bench_commands(commands)
    from .convert import add_convert_command
    from .quantize import add_quantize_command
    for add_command in (add_convert_command, add_quantize_command):
        add_global_options(add_command(commands), defaults=False)
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
    facts = device_facts(args.device)
    if args.json:
        return print_json(facts)
    for d in facts["devices"]:
        print(f"{'*' if d['selected'] else ' '} {d['index']}: {d['name']}")
        work_groups = d["max_compute_work_group_count"]
        rows = [
            ("type", d["device_type"]),
            ("driver", d["driver"]),
            ("Vulkan API", d["api_version"]),
            ("device-local heaps", ", ".join(map(format_bytes, d["device_local_heaps"])) or "none"),
            ("maxStorageBufferRange",
             f"{d['max_storage_buffer_range']} ({format_bytes(d['max_storage_buffer_range'])})"),
            ("maxComputeWorkGroupCount", " x ".join(map(str, work_groups))),
            ("maxComputeWorkGroupInvocations", str(d["max_compute_work_group_invocations"])),
            ("subgroup size", str(d["subgroup_size"]) if d["subgroup_size"] else "unknown"),
        ]
        for label, value in rows:
            print(f"    {label + ':':32}{value}")
    print(f"(* = selected device)  kp barrier fix: {facts['kp_barrier_fix_note']}")
    return 0


def device_facts(device=None) -> dict:
    """What `vkinfer devices` shows: every device with the limits vkinfer uses (heap sizes in
    bytes; subgroup_size null when unknown), which one is selected, and whether kp has
    vkinfer's barrier fix (null when kp is not importable)."""
    from .gpu.device import choose_device_index
    from .gpu.vulkan_info import query_devices

    devices = query_devices()
    selected = choose_device_index(device)
    note = kp_barrier_fix()
    return {"selected": selected,
            "devices": [{"index": d.index, "name": d.name, "selected": d.index == selected,
                         "device_type": d.device_type, "driver": d.driver,
                         "api_version": d.api_version,
                         "device_local_heaps": [size for size, local in d.heaps if local],
                         "max_storage_buffer_range": d.max_storage_buffer_range,
                         "max_compute_work_group_count": list(d.max_compute_work_group_count),
                         "max_compute_work_group_invocations": d.max_compute_work_group_invocations,
                         "subgroup_size": d.subgroup_size or None} for d in devices],
            "kp_barrier_fix": None if note.startswith("kp is not") else note == "yes",
            "kp_barrier_fix_note": note}


def print_json(facts: dict) -> int:
    import json

    def plain(value):                       # numpy scalars and anything else json cannot write
        return value.item() if hasattr(value, "item") else str(value)
    print(json.dumps(facts, indent=1, default=plain))
    return 0


# Sampling defaults: `run` is greedy (reproducible); `chat` samples as llama.cpp's CLI does.
GREEDY = dict(temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
CHATTY = dict(temp=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1)


def add_model_options(p: argparse.ArgumentParser, defaults: dict = GREEDY):
    p.add_argument("-m", "--model", dest="model_flag", metavar="MODEL", default=None,
                   help="the GGUF file (as llama.cpp's -m; or give it as the first argument)")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=None,
                   help="accepted for llama.cpp habits and ignored: every layer runs on the GPU")
    p.add_argument("-r", "--reverse-prompt", "--stop", dest="stop", action="append", default=[],
                   metavar="TEXT", help="stop when the model writes TEXT (may be repeated)")
    p.add_argument("--temp", type=float, default=defaults["temp"],
                   help=f"temperature; 0 = greedy (default {defaults['temp']})")
    p.add_argument("--top-k", type=int, default=defaults["top_k"],
                   help=f"keep the k most likely tokens, 0 = all (default {defaults['top_k']})")
    p.add_argument("--top-p", type=float, default=defaults["top_p"],
                   help=f"nucleus sampling threshold (default {defaults['top_p']})")
    p.add_argument("--min-p", type=float, default=defaults["min_p"],
                   help=f"drop tokens below min-p x the best (default {defaults['min_p']})")
    p.add_argument("--repeat-penalty", type=float, default=defaults["repeat_penalty"],
                   help=f"penalty for repeated tokens (default {defaults['repeat_penalty']})")
    p.add_argument("-s", "--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("-c", "--ctx", type=int, default=4096, help="context size in tokens")
    p.add_argument("-b", "--batch", type=int, default=32, help="prompt micro-batch size")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar while loading")
    p.add_argument("--cache-mb", type=float, default=None,
                   help="prefix-state cache size in MiB (default: 10%% of device memory; 0 = off)")
    p.add_argument("--checkpoint-every", type=int, default=256,
                   help="a long prompt leaves a cached state every N tokens (default 256)")
    p.add_argument("--kv-type", choices=("f32", "f16"), default=None,
                   help="KV cache type for attention models (ZAYA1; default f32)")
    p.add_argument("--skip-mode", choices=("zero", "identity", "never"), default=None,
                   help="ZAYA1 router skip slot: zero (reference), identity (legacy), never (llama.cpp)")


def resolve_model(path):
    """The model to run: the one given, else the bundled demo model, saying so."""
    from pathlib import Path
    if path:
        return path
    candidate = Path(__file__).resolve().parent / "data" / "demo-mamba.gguf"
    if not candidate.exists():
        raise VkInferError("no model given and no bundled model found; pass a GGUF file")
    print(f"vkinfer: no model given, using the bundled {candidate.name}; "
          "pass a GGUF file to run a real model: vkinfer chat MODEL.gguf", file=sys.stderr)
    return str(candidate)


def open_model(args, warm: bool = True):
    from .engine import Model
    options = {k: v for k, v in (("kv_type", args.kv_type), ("skip_mode", args.skip_mode)) if v}
    if args.model and args.model_flag and args.model != args.model_flag:
        raise VkInferError(f"two models given: {args.model} and -m {args.model_flag}")
    if args.n_gpu_layers is not None:
        print("vkinfer: -ngl ignored: every layer runs on the GPU", file=sys.stderr)
    path = args.model = resolve_model(args.model or args.model_flag)
    if options:
        from .gguf import open_gguf
        from .models import ARCHITECTURES
        arch = open_gguf(path, weights=False).arch
        if arch in ARCHITECTURES and not set(options) <= set(ARCHITECTURES[arch].OPTIONS):
            raise VkInferError(f"--kv-type and --skip-mode apply to ZAYA1 models, not {arch}")
    import time
    t0 = time.perf_counter()
    model = Model(path, device=args.device, n_ctx=args.ctx, n_batch=args.batch, quiet=args.quiet,
                  n_seq=getattr(args, "parallel", 1), cache_mb=args.cache_mb,
                  checkpoint_every=args.checkpoint_every, **options)
    model.load_seconds = time.perf_counter() - t0
    if warm:
        warm_up(model, args.quiet)
    return model


def warm_up(model, quiet: bool):
    import time
    t0 = time.perf_counter()
    if not quiet and sys.stderr.isatty():
        print("vkinfer: compiling kernels…", file=sys.stderr, flush=True)
    model.warm_up()
    model.warm_up_seconds = time.perf_counter() - t0


def sampling_args(args) -> dict:
    """The sampler settings, checked before the model is loaded."""
    from .sampling import Sampler
    settings = dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    repeat_penalty=args.repeat_penalty, seed=args.seed)
    try:
        Sampler(**settings)
    except ValueError as e:
        raise VkInferError(str(e)) from None
    return settings


def cmd_run(args) -> int:
    import time
    sampling = sampling_args(args)
    if args.n_predict < -1 or args.n_predict == 0:
        raise VkInferError(f"-n must be at least 1, or -1 for until the context is full (not {args.n_predict})")
    prompt = prompt_text(args)
    template = read_template(args.chat_template_file)
    model = open_model(args, warm=False)
    tok = model.tokenizer
    stop = list(args.stop)
    if args.system_prompt is not None:
        ids, plain = model.render_chat([{"role": "system", "content": args.system_prompt},
                                        {"role": "user", "content": prompt}], template)
        if plain:
            from .chat import FALLBACK_STOP_STRINGS
            stop += FALLBACK_STOP_STRINGS
    else:
        ids = tok.encode(prompt)
    if not ids:
        raise VkInferError("the prompt is empty and the model adds no BOS token; give a prompt with -p")
    if len(ids) >= model.n_ctx:
        raise VkInferError(f"the prompt's {len(ids)} tokens exceed the context size of {model.n_ctx} "
                           "tokens (raise it with -c/--ctx)")
    warm_up(model, args.quiet)
    if not args.no_display_prompt:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    max_tokens = model.n_ctx if args.n_predict == -1 else args.n_predict
    t0 = time.perf_counter()
    t_first, n_gen, finish = None, 0, None
    with model.session() as session:
        for _, text, finish in model.stream(ids, max_tokens=max_tokens, session=session,
                                            ignore_eos=args.ignore_eos, stop=stop, **sampling):
            if t_first is None:
                t_first = time.perf_counter()    # the prompt is in, and its first token sampled
            n_gen += 1
            sys.stdout.write(text)
            sys.stdout.flush()
        full = session.n_past >= model.n_ctx - 1 and finish == "length" and n_gen < max_tokens
    sys.stdout.write("\n")
    t_end = time.perf_counter()
    if full:
        print(f"vkinfer: stopped at the end of the context ({model.n_ctx} tokens; raise it with -c)",
              file=sys.stderr)
    print(speed_report(len(ids), (t_first or t_end) - t0, n_gen, t_end - (t_first or t_end),
                       model.load_seconds, model.warm_up_seconds), file=sys.stderr)
    return 0


def prompt_text(args) -> str:
    """-p, or the file -f names (- for stdin); with -e, backslash escapes processed."""
    text = args.prompt
    if args.file is not None:
        if args.prompt:
            raise VkInferError("give the prompt with -p or -f, not both")
        try:
            text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8",
                                                                   errors="replace").read()
        except OSError as e:
            raise VkInferError(f"{args.file}: {e.strerror}") from None
    return unescape(text) if args.escape else text


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


def unescape(text: str) -> str:
    """llama.cpp's -e: \\n, \\t, \\r, \\\\, \\', \\", \\0; anything else after a backslash is kept."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPES:
            out.append(ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def read_template(path) -> str | None:
    if path is None:
        return None
    try:
        return open(path, encoding="utf-8").read()
    except OSError as e:
        raise VkInferError(f"{path}: {e.strerror}") from None


def speed_report(n_prompt: int, t_prompt: float, n_gen: int, t_gen: float, t_load: float = None,
                 t_warm: float = None) -> str:
    """'load: S s; warm-up: S s; prompt: N tokens in S s (R tokens/s); generation: ...'."""
    line = f"prompt: {n_prompt} tokens in {t_prompt:.2f} s ({n_prompt / max(t_prompt, 1e-9):.1f} tokens/s)"
    if n_gen:
        line += f"; generation: {n_gen} tokens in {t_gen:.2f} s ({n_gen / max(t_gen, 1e-9):.1f} tokens/s)"
    if t_warm is not None:
        line = f"load: {t_load:.2f} s; warm-up (kernels): {t_warm:.2f} s; " + line
    return line


def cmd_chat(args) -> int:
    from .chat_cli import chat_loop
    sampling = sampling_args(args)
    return chat_loop(open_model(args), args, sampling)


def cmd_serve(args) -> int:
    from .server import serve
    return serve(args)


def cmd_info(args) -> int:
    from .gguf import open_gguf
    facts = model_facts(open_gguf(args.model), args.ctx)
    if args.json:
        return print_json(facts)
    vocab = facts["vocabulary"]
    print(f"{facts['file']}: {facts['arch']}, {facts['n_params'] / 1e6:.1f}M parameters, "
          f"{format_bytes(facts['weight_bytes'])} of weights, GGUF v{facts['gguf_version']}")
    print("hyper-parameters:")
    for key, value in facts["hyper_parameters"].items():
        print(f"    {key + ':':32}{value}")
    print(f"tensors: {facts['tensors']}")
    for qtype, t in facts["tensor_types"].items():
        print(f"    {qtype + ':':32}{t['count']:5d} tensors, {format_bytes(t['bytes'])}")
    print(f"vocabulary: {vocab['rows']} rows in token_embd, {vocab['tokens']} tokens, "
          f"tokenizer model {vocab['tokenizer_model'] or 'none'!r}"
          f" (pre-tokenizer {vocab['pre_tokenizer'] or 'default'!r})")
    print(f"chat template: {'present' if facts['chat_template'] else 'none'}")
    print(f"device memory at context {facts['memory']['n_ctx']}: " +
          ", ".join(f"{k} {format_bytes(v)}" for k, v in facts["memory"]["bytes"].items()))
    return 0


def model_facts(f, n_ctx: int) -> dict:
    """What `vkinfer info` shows, as plain values (sizes in bytes; a missing tokenizer model or
    pre-tokenizer is null)."""
    from dataclasses import asdict
    from .loader import memory_needed

    tokens = f.get("tokenizer.ggml.tokens")
    return {"file": f.path.name, "path": str(f.path), "arch": f.arch, "n_params": f.n_params(),
            "weight_bytes": f.weight_bytes(), "gguf_version": f.get("GGUF.version"),
            "hyper_parameters": asdict(f.params), "tensors": len(f.tensors),
            "tensor_types": {qtype: {"count": count, "bytes": nbytes}
                             for qtype, (count, nbytes) in f.bytes_by_type().items()},
            "vocabulary": {"rows": f.n_vocab, "tokens": len(tokens) if tokens else 0,
                           "tokenizer_model": f.get("tokenizer.ggml.model"),
                           "pre_tokenizer": f.get("tokenizer.ggml.pre")},
            "chat_template": bool(f.get("tokenizer.chat_template")),
            "memory": {"n_ctx": n_ctx, "bytes": memory_needed(f, n_ctx)}}


# ---- vkinfer bench, vkinfer synth --------------------------------------------------------------
BENCH_FORMATS = ("md", "csv", "json", "jsonl")       # llama-bench's -o, less sql


def add_bench_commands(commands):
    bench = commands.add_parser(
        "bench", help="prompt and generation speed (llama-bench style), roofline",
        description="Prompt and generation speed like llama-bench: -p, -n and -b take comma lists "
                    "and every combination is a row.")
    bench.add_argument("model", help="GGUF file")
    bench.add_argument("-p", "--n-prompt", type=_counts, default=(512,), metavar="N,N,...",
                       help="prompt tokens: a pp row for each (0: none; default 512)")
    bench.add_argument("-n", "--n-gen", type=_counts, default=(128,), metavar="N,N,...",
                       help="generated tokens: a tg row for each (0: none; default 128)")
    bench.add_argument("-pg", dest="pg", type=_pair, action="append", default=[], metavar="PP,TG",
                       help="a prompt of PP tokens then TG generated, one row ppPP+tgTG with the "
                            "combined tokens/s (may be repeated)")
    bench.add_argument("-r", "--repetitions", type=int, default=3, help="repetitions after a warm-up")
    bench.add_argument("-b", "--batch", type=_int_list, default=(32,), metavar="B,B,...",
                       help="prompt micro-batch sizes: every test runs with each (default 32)")
    bench.add_argument("--roofline", action="store_true",
                       help="measure read bandwidth; decode speed against its ideal; Python overhead "
                            "(with the first -b and the first -n)")
    bench.add_argument("--profile", action="store_true",
                       help="time a decode step kernel by kernel (with the first -b)")
    bench.add_argument("--parallel", type=_int_list, default=(), metavar="B,B,...",
                       help="also decode B sequences together (aggregate tokens/s), e.g. 1,2,4,8")
    bench.add_argument("-o", "--output", choices=BENCH_FORMATS, default="md",
                       help="md: the table (default); csv, jsonl: a row per test, the notes on "
                            "stderr; json: everything")
    bench.add_argument("--json", dest="output", action="store_const", const="json",
                       help="the same as -o json")
    add_global_options(bench, defaults=False)
    bench.set_defaults(run=cmd_bench)

    synth = commands.add_parser("synth", help="write real-shaped GGUF models with random weights")
    synth.add_argument("models", nargs="+", metavar="model",
                       help="mamba-130m, mamba-370m, mamba-1.4b, mamba-2.8b, falcon-mamba-7b, mamba2-130m, mamba2-370m, mamba2-780m, mamba2-1.3b, mamba2-2.7b, mamba-codestral-7b, zaya1-8b")
    synth.add_argument("-t", "--types", nargs="+", default=["q8_0"], help="f16, q8_0, q4_k_m")
    synth.add_argument("-o", "--out", default="models-synth", help="directory (default: models-synth)")
    synth.add_argument("--force", action="store_true", help="rewrite files that exist")
    synth.add_argument("--tokenizer-from", default=None, metavar="GGUF",
                       help="copy the tokenizer from this GGUF (default: the source checkout's fixtures)")
    add_global_options(synth, defaults=False)
    synth.set_defaults(run=cmd_synth)


def _int_list(text: str, least: int = 1) -> tuple:
    import argparse
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < least:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers >= {least} separated by commas, not {text!r}")
    return values


def _counts(text: str) -> tuple:
    return _int_list(text, least=0)


def _pair(text: str) -> tuple:
    import argparse
    try:
        values = _int_list(text)
    except argparse.ArgumentTypeError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected PP,TG (two numbers >= 1), not {text!r}")
    return values


def cmd_bench(args) -> int:
    from .bench import bench, render
    if args.repetitions < 1:
        raise VkInferError(f"-r must be at least 1 (not {args.repetitions})")
    out = bench(args.model, args.n_prompt, args.n_gen, args.repetitions, args.batch, args.device,
                with_roofline=args.roofline, with_profile=args.profile, parallel=args.parallel,
                pg=args.pg)
    text, notes = render(out, args.output)
    if text:
        print(text)
    if notes:
        print(notes, file=sys.stderr)
    return 0


def cmd_synth(args) -> int:
    from pathlib import Path
    from . import synth
    for model in args.models:
        for wtype in args.types:
            try:
                synth.plan(model, wtype)
            except ValueError as e:
                raise VkInferError(str(e)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        for wtype in args.types:
            path = out / synth.file_name(model, wtype)
            if path.exists() and not args.force:
                print(f"{path}: exists (--force rewrites it)")
                continue
            synth.write(path, model, wtype, tokenizer_from=args.tokenizer_from)
            print(f"{path}: {format_bytes(path.stat().st_size)}")
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
