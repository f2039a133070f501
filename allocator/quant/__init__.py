"""Quantizers, pruners, bit packing, QuantLinear and checkpoint I/O."""

# Revision of what the quantizers output: bumped when a method gives other weights for the same
# inputs, so that resumed ``allocator run`` jobs re-apply (and re-evaluate) instead of loading
# checkpoints (or tables: every option is scored by its quantizer) the earlier code made.
# 2: every quantizer searches each group's range (RTN, GPTQ, SparseGPT).
REVISION = 2
# Revision of how ``apply_plan`` calibrates them (the quantizers' revision is part of it): bumped
# when applying a plan gives other weights, so checkpoints, evaluations and apply journals of
# earlier code are not reused; profile tables, scored without apply, keep theirs.
# 2.1: the default calibration became "asymmetric" (was "plain").
APPLY_REVISION = f"{REVISION}.1"

# What GPTQ/SparseGPT calibrate a layer on when a plan is applied (blocks are always compressed in
# order, each on the outputs of the compressed blocks before it):
CALIBRATIONS = {
    "plain": "every layer of a block on that block before any of it is compressed",
    "sequential": "a block's layers stage by stage, each on the outputs of the compressed "
    "earlier stages (GPTQ's true-sequential; allocator.models.layer_order)",
    "asymmetric": "sequential, and each layer aims at its outputs in the original model "
    "(GPTAQ; allocator.quant.gptq.clean_target)",
}
DEFAULT_CALIBRATION = "asymmetric"


def check_calibration(value: str) -> str:
    """``value`` if it names a calibration, else an InputError that lists them."""
    from allocator.errors import InputError

    if value not in CALIBRATIONS:
        raise InputError(
            f"calibration {value!r} is not known; choose one of {', '.join(CALIBRATIONS)}"
        )
    return value
