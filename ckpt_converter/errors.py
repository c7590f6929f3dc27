"""The one error type of the converter: a file or a request the user can fix."""
from errors import CheckpointError


class ConverterError(CheckpointError):
    """An unreadable, unsafe or unfitting checkpoint; printed by the CLI as one line."""
