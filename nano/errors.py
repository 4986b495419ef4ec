"""The one exception type the CLI turns into a one-line error message."""


class NanoError(Exception):
    """A user-facing error: the message names the file/field and the fix, on one line."""
