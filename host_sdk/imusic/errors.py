"""Errors that the CLI reports as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user or the outside world: a missing file, an unknown board, a dead port.

    The CLI prints ``imusic: error: <message>`` and exits with status 2.
    """


def read_error(path: object, exc: OSError, what: str, error: type[UserError] = UserError) -> UserError:
    """The one-line error for an OSError met reading a user's file; `what` is what the file should
    have been ("a recording"), for the message about a directory."""
    if isinstance(exc, FileNotFoundError):
        return error(f"{path}: no such file")
    if isinstance(exc, IsADirectoryError):
        return error(f"{path} is a directory, not {what}")
    if isinstance(exc, PermissionError):
        return error(f"{path}: permission denied")
    return error(f"{path}: cannot read: {exc.strerror or exc}")
