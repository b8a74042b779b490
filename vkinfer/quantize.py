"""`vkinfer quantize IN.gguf OUT.gguf TYPE`: a GGUF model (F32/F16/BF16 weights) to a llama.cpp
quantization mix, as llama.cpp's `llama-quantize` makes it without an importance matrix.

The type of each tensor follows llama-quantize's rules (src/llama-quant.cpp,
`tensor_allows_quantization`, `llama_tensor_get_type_impl`, `tensor_type_fallback`) for the
mixes and architectures vkinfer has: only matrices whose name ends in `weight` are quantized,
norms, the router (`ffn_gate_inp`) and the conv kernels never; the output (and a tied embedding)
is Q6_K, or Q8_0 where its rows are not whole K-blocks; the `_M` mixes give more bits to some
attn_v / ffn_down layers; a row that a K-type cannot cut into 256-weight blocks takes the legacy
fallback type, and one that is not whole 32-weight blocks stays F16. The blocks come from
vkinfer.quants (ggml's reference quantizers). Tensors stream one at a time from the memory-mapped
input, in row chunks, so memory stays at about the largest output tensor plus the chunks."""
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import quants
from .errors import VkInferError

log = logging.getLogger(__name__)

# TYPE: (general.file_type, llama.cpp LLAMA_FTYPE number, the mix's default tensor type)
MIXES = {"q4_0": (2, "Q4_0"), "q4_1": (3, "Q4_1"), "q8_0": (7, "Q8_0"), "q5_0": (8, "Q5_0"),
         "q5_1": (9, "Q5_1"), "q2_k": (10, "Q2_K"), "q3_k_s": (11, "Q3_K"), "q3_k_m": (12, "Q3_K"),
         "q3_k_l": (13, "Q3_K"), "q4_k_s": (14, "Q4_K"), "q4_k_m": (15, "Q4_K"),
         "q5_k_s": (16, "Q5_K"), "q5_k_m": (17, "Q5_K"), "q6_k": (18, "Q6_K")}
# a K-type whose rows are not whole 256-blocks: llama.cpp's tensor_type_fallback
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# name parts that are never quantized: llama.cpp's list, as far as vkinfer's architectures have
# them, plus ZAYA's grouped conv kernel, which the ZAYA1 draft's llama-quantize keeps F32 too
NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d", "cca_conv_grp")
CHUNK_WEIGHTS = 1 << 18            # rows are quantized in chunks of about this many weights
FLOAT_TYPES = ("F32", "F16", "BF16")


# ---- which type each tensor gets ---------------------------------------------------------------
def category(name: str) -> str:
    """llama.cpp's tensor_get_category, in its order."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for part, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                      ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                      ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                      ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if part in name:
            return cat
    return "other"


def quantizable(name: str, ne: tuple) -> bool:
    """llama.cpp's tensor_allows_quantization: a matrix (2-D or 3-D, ggml's n_dims) whose name
    ends in `weight` and is not on the NEVER_QUANTIZED list."""
    n_dims = len(ne)
    while n_dims > 1 and ne[n_dims - 1] == 1:
        n_dims -= 1
    return (n_dims >= 2 and name.endswith("weight")
            and not any(part in name for part in NEVER_QUANTIZED))


def layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fit_rows(qtype: str, n_cols: int) -> str:
    """The type itself if rows of n_cols are whole blocks of it, else its fallback, else F16."""
    if qtype in FLOAT_TYPES or n_cols % quants.block_size(qtype) == 0:
        return qtype
    qtype = FALLBACK.get(qtype, "F16")
    return qtype if n_cols % quants.block_size(qtype) == 0 else "F16"


def choose_types(tensors: list, mix: str, n_layer: int, n_expert: int = 0, n_gqa: int = 0) -> dict:
    """tensors: (name, ne (ggml order), type) -> {name: type}, by llama-quantize's rules for
    the mix (without an imatrix). The per-layer counters advance in llama.cpp's tensor order
    (by layer number, then name). llama.cpp's Falcon and 70B-Llama special cases are left out:
    vkinfer runs neither."""
    default = MIXES[mix][1]
    tied = not any(name == "output.weight" for name, _, _ in tensors)
    n_attn_v = sum(category(name) == "attn_v" for name, _, _ in tensors)
    seen = {"attn_v": 0, "ffn_down": 0}
    chosen = {}
    for name, ne, cur in sorted(tensors, key=lambda t: (layer_of(t[0]), t[0])):
        if not quantizable(name, ne):
            chosen[name] = cur
            continue
        cat = category(name)
        if cat == "ffn_down":       # experts: the layer is the block's number, not a counter
            i, n = (layer_of(name) if n_expert > 1 else seen[cat]), n_layer
        else:
            i, n = seen.get(cat, 0), n_attn_v
        if cat in seen:
            seen[cat] += 1
        chosen[name] = fit_rows(_mix_rule(mix, default, cat, ne[0], i, n, tied, n_expert, n_gqa), ne[0])
    return chosen


def _mix_rule(mix, t, cat, n_cols, i, n, tied, n_expert, n_gqa) -> str:
    """llama_tensor_get_type_impl for the non-IQ mixes: t is the mix's default type, (i, n) the
    tensor's place among the attn_v tensors or layers (ffn_down)."""
    if cat == "output" or (tied and cat == "token_embd"):
        if n_cols % quants.block_size(t):
            return "Q8_0"
        return "Q8_0" if t == "Q8_0" else "Q6_K"
    if cat == "attn_v":
        if mix == "q2_k":
            t = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif mix == "q3_k_m":
            t = "Q5_K" if i < 2 else "Q4_K"
        elif mix == "q3_k_l":
            t = "Q5_K"
        elif mix in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
            t = "Q6_K"
        elif mix == "q4_k_s" and i < 4:
            t = "Q5_K"
        return "Q8_0" if n_expert == 8 else t
    if cat == "attn_k":
        return "Q8_0" if n_expert == 8 else t
    if cat == "ffn_down":
        if mix == "q2_k":
            return "Q3_K"
        if mix == "q3_k_m":
            return "Q5_K" if i < n // 16 else "Q4_K"
        if mix == "q3_k_l":
            return "Q5_K"
        if mix in ("q4_k_m", "q5_k_m"):
            return "Q6_K" if use_more_bits(i, n) else t
        if mix == "q4_k_s" and i < n // 8:
            return "Q5_K"
        return t
    if cat == "attn_output":
        if n_expert == 8:
            return "Q5_K" if mix in ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m") else t
        return {"q2_k": "Q3_K", "q3_k_m": "Q4_K", "q3_k_l": "Q5_K"}.get(mix, t)
    return t


# ---- reading and writing -----------------------------------------------------------------------
def _row_bytes(qtype: str, n_cols: int) -> int:
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return n_cols // block * size


def _as_f32(raw_rows: np.ndarray, qtype: str) -> np.ndarray:
    """Rows of raw bytes of type qtype -> float32 rows."""
    if qtype == "F32":
        return raw_rows.view(np.float32)
    if qtype == "F16":
        return raw_rows.view(np.float16).astype(np.float32)
    import gguf
    return gguf.quants.dequantize(raw_rows, gguf.GGMLQuantizationType[qtype]).reshape(len(raw_rows), -1)


def _encode(rows: np.ndarray, qtype: str) -> np.ndarray:
    if qtype == "F32":
        return rows.view(np.uint8)
    if qtype == "F16":
        return rows.astype(np.float16).view(np.uint8)
    return quants.quantize(rows, qtype)


def _convert_tensor(t, n_cols: int, out_type: str, pool, errors: bool, progress):
    """The tensor t (a vkinfer.gguf.TensorInfo) as out_type: uint8 (rows, row bytes), built in
    row chunks; with errors, also the summed squared error and squared weights."""
    n_rows = int(np.prod(t.shape[:-1], dtype=np.int64)) if len(t.shape) > 1 else 1
    raw = t.raw().reshape(n_rows, -1)
    out = np.empty((n_rows, _row_bytes(out_type, n_cols)), np.uint8)
    step = max(1, CHUNK_WEIGHTS // n_cols)

    def chunk(start):
        rows = _as_f32(raw[start:start + step], t.type)
        q = out[start:start + step] = _encode(rows, out_type)
        sums = (0.0, 0.0)
        if errors:
            import gguf
            back = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[out_type]).reshape(rows.shape)
            sums = (float(np.square(back - rows, dtype=np.float64).sum()),
                    float(np.square(rows, dtype=np.float64).sum()))
        progress(raw[start:start + step].nbytes)
        return sums

    sums = list(pool.map(chunk, range(0, n_rows, step)))
    return out, sum(s[0] for s in sums), sum(s[1] for s in sums)


def _copy_metadata(reader, writer, file_type: int):
    import gguf
    from gguf import GGUFValueType
    skip = ("general.architecture", "general.alignment", "general.file_type",
            "general.quantization_version")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(file_type)


def _hparams(f) -> dict:
    """What llama.cpp's type rules read from the model: layers, experts, query heads per KV head."""
    def scalar(key):            # a per-layer array counts as its largest entry
        v = f.get(f"{f.arch}.{key}")
        return int(max(v, default=0) if isinstance(v, list) else v or 0)
    n_head, n_head_kv = scalar("attention.head_count"), scalar("attention.head_count_kv")
    return dict(n_layer=scalar("block_count"), n_expert=scalar("expert_count"),
                n_gqa=n_head // n_head_kv if n_head and n_head_kv else 0)


def quantize_file(inp, out, mix: str, allow_requantize: bool = False, errors: bool = False,
                  threads: int | None = None, quiet: bool = False) -> dict:
    """Quantize the GGUF file inp to out with the mix (a key of MIXES); returns a summary
    dict: path, arch, mix, tensors, types {type: count}, bytes_in, bytes_out, seconds, weights
    (quantized weights), errors {name: (type, rms error, rms weight)} when asked."""
    import gguf
    from tqdm import tqdm
    from .gguf import open_gguf
    from .models import ARCHITECTURES
    t0 = time.perf_counter()
    mix = mix.lower()
    if mix not in MIXES:
        raise VkInferError(f"unknown quantization type {mix!r} (choose from {', '.join(MIXES)})")
    if threads is not None and threads < 1:
        raise VkInferError(f"--threads must be at least 1 (not {threads})")
    inp, out = Path(inp), Path(out)
    f = open_gguf(inp, weights=False)
    if f.arch not in ARCHITECTURES:
        raise VkInferError(f"{inp.name}: architecture {f.arch!r} is not one vkinfer quantizes "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    if out.is_dir():
        raise VkInferError(f"{out}: is a directory; give the output file name")
    if not out.parent.is_dir():
        raise VkInferError(f"{out.parent}: no such directory for the output file")
    if out.exists() and out.resolve() == inp.resolve():
        raise VkInferError(f"{out}: the output would overwrite the input")
    tensors = list(f.tensors.values())
    ne = {t.name: tuple(reversed(t.shape)) for t in tensors}
    types = choose_types([(t.name, ne[t.name], t.type) for t in tensors], mix, **_hparams(f))
    for t in tensors:
        if types[t.name] != t.type and t.type not in FLOAT_TYPES:
            if not allow_requantize:
                raise VkInferError(f"{inp.name}: tensor {t.name} is already {t.type}; quantize the "
                                   "F16/BF16/F32 model, or pass --allow-requantize to dequantize "
                                   "and quantize it again (it loses more than once)")
            try:                    # one block: can gguf-py dequantize this type?
                block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.type]][1]
                _as_f32(t.raw()[:block_bytes][None], t.type)
            except (NotImplementedError, KeyError, ValueError):
                raise VkInferError(f"{inp.name}: tensor {t.name} is {t.type}, which vkinfer "
                                   "cannot dequantize") from None

    writer = gguf.GGUFWriter(None, f.arch)
    _copy_metadata(f.reader, writer, MIXES[mix][0])
    order = sorted(tensors, key=lambda t: (layer_of(t.name), t.name))   # llama-quantize's order
    for t in order:
        n_rows = int(np.prod(ne[t.name][1:], dtype=np.int64))
        nbytes = n_rows * _row_bytes(types[t.name], ne[t.name][0])
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes,
                               gguf.GGMLQuantizationType[types[t.name]])

    total_in = sum(t.nbytes for t in tensors)
    bar = tqdm(total=total_in, unit="B", unit_scale=True, desc=f"quantizing {inp.name}",
               disable=quiet or not sys.stderr.isatty(), leave=False, file=sys.stderr)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    report, counts, n_weights = {}, {}, 0
    try:
        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in order:
                new = types[t.name]
                counts[new] = counts.get(new, 0) + 1
                bar.set_postfix_str(f"{t.name} → {new}", refresh=False)
                log.info("%s %s %s → %s", t.name, list(ne[t.name]), t.type, new)
                if new == t.type:
                    writer.write_tensor_data(t.raw())
                    bar.update(t.nbytes)
                    continue
                data, err2, w2 = _convert_tensor(t, ne[t.name][0], new, pool, errors, bar.update)
                writer.write_tensor_data(data)
                del data
                n_weights += int(np.prod(t.shape))
                if errors:
                    n = int(np.prod(t.shape))
                    report[t.name] = (new, (err2 / n) ** 0.5, (w2 / n) ** 0.5)
            writer.close()
        os.replace(tmp, out)
    except OSError as e:
        raise VkInferError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        bar.close()
        for fout in writer.fout or ():
            fout.close()
        if tmp.exists():
            tmp.unlink()
    return dict(path=out, arch=f.arch, mix=mix, tensors=len(tensors), types=counts,
                bytes_in=inp.stat().st_size, bytes_out=out.stat().st_size,
                seconds=time.perf_counter() - t0, weights=n_weights, errors=report)


def summary_lines(s: dict) -> list:
    def size(n):
        return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"
    types = ", ".join(f"{k} {v}" for k, v in sorted(s["types"].items()))
    lines = [f"wrote {s['path']}: {s['arch']} {s['mix']}, {s['tensors']} tensors ({types}), "
             f"{size(s['bytes_in'])} → {size(s['bytes_out'])} in {s['seconds']:.2f} s "
             f"({s['weights'] / max(s['seconds'], 1e-9) / 1e6:.1f} M weights/s)"]
    if s["errors"]:
        lines.append(f"{'tensor':<40} {'type':<6} {'rms error':>11} {'rms weight':>11} {'relative':>9}")
        for name, (qtype, err, rms) in s["errors"].items():
            lines.append(f"{name:<40} {qtype:<6} {err:11.4e} {rms:11.4e} {err / rms if rms else 0:9.2%}")
    return lines


# ---- the command ------------------------------------------------------------------------------
def cmd_quantize(args) -> int:
    s = quantize_file(args.input, args.output, args.type, allow_requantize=args.allow_requantize,
                      errors=args.error, threads=args.threads, quiet=args.quiet)
    print("\n".join(summary_lines(s)))
    return 0


def add_quantize_command(commands):
    """Add `quantize` to the argparse subparsers object `commands`; returns its parser."""
    p = commands.add_parser("quantize", help="quantize a GGUF model as llama-quantize does "
                                             "(Q4_K_M, Q8_0, ...)")
    p.add_argument("input", metavar="IN.gguf", help="model with F32/F16/BF16 weights")
    p.add_argument("output", metavar="OUT.gguf", help="file to write")
    p.add_argument("type", metavar="TYPE", help=f"one of {', '.join(MIXES)}")
    p.add_argument("--error", action="store_true",
                   help="report each quantized tensor's RMS reconstruction error")
    p.add_argument("--allow-requantize", action="store_true",
                   help="accept already-quantized tensors: dequantize them and quantize again")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="worker threads (default: one per CPU core)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_quantize)
    return p
