"""Errors that the CLI reports as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user or the outside world: a missing file, an unknown board, a dead port.

    The CLI prints ``imusic: error: <message>`` and exits with status 2.
    """
