"""Quantizers, pruners, bit packing, QuantLinear and checkpoint I/O."""

# Revision of what the quantizers output: bumped when a method gives other weights for the same
# inputs, so that resumed ``allocator run`` jobs re-apply (and re-evaluate) instead of loading
# checkpoints (or tables: every option is scored by its quantizer) the earlier code made.
# 2: every quantizer searches each group's range (RTN, GPTQ, SparseGPT).
REVISION = 2
