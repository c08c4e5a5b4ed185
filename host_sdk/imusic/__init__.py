"""imusic: facial expression capture from face-worn micro-IMUs.

Layers, lowest first: ``imusic.protocol`` (wire format), then links, sessions and apps on top.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # `imusic.Session` without importing the session stack for every CLI command.
    if name == "Session":
        from imusic.session import Session

        return Session
    raise AttributeError(f"module 'imusic' has no attribute {name!r}")
