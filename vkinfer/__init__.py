"""vkinfer: GGUF language models (Mamba, ZAYA1) on any Vulkan GPU, through Kompute."""
__version__ = "0.1.0"

from .errors import VkInferError  # noqa: F401
