"""Readers of other tools' measurements: ExLlamaV2 ``measurement.json`` and llama.cpp imatrix.

Long-format CSV tables (``allocator.schema.io.table_from_csv``) stay the neutral exchange format:
one row per (unit, option) with ``unit, numel, bits, group_size, sparsity, loss``.
"""

from allocator.profile.importers.exl2_measurement import read_exl2_measurement
from allocator.profile.importers.imatrix import Imatrix, read_imatrix

__all__ = ["Imatrix", "read_exl2_measurement", "read_imatrix"]
