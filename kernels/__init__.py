"""Low-bit Triton kernels, shipped as ``allocator.kernels``."""
