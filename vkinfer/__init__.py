"""vkinfer: GGUF language models (Mamba, ZAYA1) on any Vulkan GPU, through Kompute.

    model = vkinfer.load("m.gguf", device=None, n_ctx=4096)
    for text in model.generate("Hello", max_tokens=32): print(text, end="")
"""
__version__ = "0.1.0"

from .errors import VkInferError  # noqa: F401


def load(path, device=None, n_ctx: int = 4096, n_batch: int = 32, quiet: bool = True, **options):
    """Load a GGUF model onto a Vulkan device (see vkinfer.engine.Model); options go to the
    architecture (ZAYA1: skip_mode="zero"|"identity"|"never", kv_type="f32"|"f16")."""
    from .engine import Model
    return Model(path, device=device, n_ctx=n_ctx, n_batch=n_batch, quiet=quiet, **options)


def __getattr__(name):
    if name == "Tokenizer":
        from .tokenizer import Tokenizer
        return Tokenizer
    raise AttributeError(name)
