"""imusic: facial expression capture from face-worn micro-IMUs.

Layers, lowest first: ``imusic.protocol`` (wire format), then links, sessions and apps on top.
"""

__version__ = "0.1.0"
