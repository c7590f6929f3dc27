"""The one root of errors meant for the user: printed as one line by every command, no traceback.

A leaf module (it imports nothing), so that model code, I/O code and the command-line tools can
all raise the same family without importing each other.
"""


class UserError(Exception):
    """Bad input the user can fix (a wrong path, a checkpoint that does not fit, ...)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or does not fit the model it is meant for."""


class UserKeyError(UserError, KeyError):
    """A lookup by name that failed (unknown architecture, unknown primitive, ...).

    Also a ``KeyError`` for callers that expect one; printed without the quotes ``KeyError``
    puts around its message.
    """

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class ModelFileError(UserError):
    """An exported model file (.mge, .onnx) that cannot be loaded or run here."""
