"""The size model, kept importable here: it lives in ``allocator.schema.size``."""

from allocator.schema.size import DEFAULT_SIZE_MODEL, GGML_TYPES, SizeModel, ggml_type_for

__all__ = ["DEFAULT_SIZE_MODEL", "GGML_TYPES", "SizeModel", "ggml_type_for"]
