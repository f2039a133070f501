"""allocator: optimization-based bit allocation for compressing neural networks."""

__version__ = "0.1.0"
