"""Moved: the sparse packed layouts live in ``allocator.quant.packing_sparse`` (one
``SparsePackedWeight`` for checkpoints and the 2:4 kernel); this alias keeps old imports working."""

from allocator.quant.packing_sparse import SparsePackedWeight, nm_storable, pack_sparse  # noqa: F401
