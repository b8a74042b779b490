"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class VkInferError(Exception):
    """An error a person can act on: the message names the file, tensor or limit."""
