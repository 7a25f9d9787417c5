"""The version, in a module of its own: any module may import it without
importing the package's public API (and with it the producer side)."""

__version__ = "0.1.0"
