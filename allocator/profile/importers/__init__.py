"""Readers of other tools' measurements: ExLlamaV2 ``measurement.json``, llama.cpp imatrix,
ModelOpt ``auto_quantize`` candidate statistics and AutoRound AutoScheme scores.

Long-format CSV tables (``allocator.schema.io.table_from_csv``) stay the neutral exchange format:
one row per (unit, option) with ``unit, numel, bits, group_size, sparsity, loss``.
"""

from allocator.profile.importers.autoround_autoscheme import table_from_autoscheme
from allocator.profile.importers.exl2_measurement import read_exl2_measurement
from allocator.profile.importers.imatrix import Imatrix, read_imatrix
from allocator.profile.importers.modelopt_autoquant import table_from_auto_quantize

__all__ = [
    "Imatrix",
    "read_exl2_measurement",
    "read_imatrix",
    "table_from_auto_quantize",
    "table_from_autoscheme",
]
