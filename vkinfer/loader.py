"""Upload a checked GGUF file's weights to the device, after checking that the model fits.

Weights keep their GGUF format. Data streams from the memory-mapped file through the device's
one staging window, so host memory stays at the mapping plus that window."""
import sys

from tqdm import tqdm

from .errors import VkInferError
from .gguf import GGUFFile
from .gpu.weights import upload_weight


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def device_memory(dev) -> int:
    """Bytes the model may use: the largest device-local heap; for a CPU device (lavapipe),
    whose reported heap is a fixed size, the host's physical memory."""
    have = dev.info.device_local_bytes
    if dev.info.device_type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
            have = max(have, total)
        except (OSError, StopIteration):
            pass
    return have


def memory_needed(f: GGUFFile, n_ctx: int, n_batch: int = 32, n_seq: int = 1, **options) -> dict:
    """Device bytes: weights as stored, the state of n_seq slots at n_ctx (the architecture's
    own count, KV caches in their type), scratch for a step of max(n_batch, n_seq) rows
    (activations, estimated from the widest matrix, and logits)."""
    from .models import ARCHITECTURES
    rows = max(n_batch, n_seq)
    widest = max((max(t.shape) for t in f.tensors.values()
                  if len(t.shape) >= 2 and t.name != "token_embd.weight"), default=0)
    need = {"weights": f.weight_bytes(),
            "state": n_seq * sum(ARCHITECTURES[f.arch].slot_state_bytes(f, n_ctx, **options)),
            "scratch": 4 * rows * (8 * widest + f.n_vocab)}
    need["total"] = sum(need.values())
    return need


def check_fits(dev, f: GGUFFile, n_ctx: int, n_batch: int = 32, n_seq: int = 1, **options) -> dict:
    """The memory estimate; a VkInferError naming both numbers when it exceeds the device heap."""
    need = memory_needed(f, n_ctx, n_batch, n_seq, **options)
    have = device_memory(dev)
    if have and need["total"] > have:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in need.items() if k != "total")
        # The state grows linearly with the context (KV caches): the largest context that fits.
        base = memory_needed(f, 0, n_batch, n_seq, **options)["total"]
        per_token = (need["total"] - base) / n_ctx
        fits = int((have - base) // per_token) if per_token > 0 and have > base else 0
        hint = (f"the largest context that fits is -c {fits}" + (f" (with {n_seq} slots)" if n_seq > 1 else "")
                if fits >= 1 else "use a smaller quantization" + (" or fewer slots" if n_seq > 1 else ""))
        raise VkInferError(f"{f.path.name} needs {format_bytes(need['total'])} of device memory ({parts}) "
                           f"at context {n_ctx}, but {dev.name} has {format_bytes(have)}; {hint}")
    return need


def upload_tensors(dev, f: GGUFFile, quiet: bool = False) -> dict:
    """Every tensor of the file on the device: 1-D tensors as f32 Tensors, matrices and
    expert stacks as Weights in their own type. A progress bar counts bytes on a terminal."""
    import numpy as np
    total = f.weight_bytes()
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"loading {f.path.name}",
               disable=quiet or not sys.stderr.isatty(), leave=False)
    out = {}
    try:
        for name, t in f.tensors.items():
            dtype = t.type.lower()
            if len(t.shape) == 1 or (dtype == "f32" and t.nbytes <= dev.max_binding_bytes):
                out[name] = dev.upload(np.asarray(t.data, np.float32).reshape(t.shape), name=name)
            elif dtype in ("f32", "f16"):
                out[name] = upload_weight(dev, np.asarray(t.data).reshape(t.shape), dtype, name)
            elif dtype == "bf16":
                out[name] = upload_weight(dev, t.raw().view(np.uint16).reshape(t.shape), dtype, name)
            else:
                out[name] = upload_weight(dev, t.raw().reshape(*t.shape[:-1], -1), dtype, name)
            bar.update(t.nbytes)
    finally:
        bar.close()
    return out
