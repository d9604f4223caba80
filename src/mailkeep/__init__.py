"""mailkeep: a self-contained secure mail daemon."""

__version__ = "0.1.0"
