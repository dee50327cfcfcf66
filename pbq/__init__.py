"""pbq: a batch queue for a pile of command lines and a handful of shared machines."""

__version__ = "0.1.0"
