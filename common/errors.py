"""Errors meant for the user of a command-line tool: printed as one line, no traceback."""


class UserError(Exception):
    """Bad input the user can fix (a wrong path, a checkpoint that does not fit, ...)."""
