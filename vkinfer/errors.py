"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class VkInferError(Exception):
    """An error a person can act on: the message names the file, tensor or limit."""


class BadArgument(VkInferError, ValueError):
    """A value passed to the Python API that cannot be used (a token id outside the
    vocabulary, text that is not Unicode): a VkInferError that is also a ValueError."""
