"""Quantizers, pruners, bit packing, QuantLinear and checkpoint I/O."""
