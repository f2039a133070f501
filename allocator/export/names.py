"""Names moved to their owners: GGUF tensor names to ``allocator.models.gguf_names``, exact-name
patterns to ``allocator.patterns``; this alias keeps old imports working."""

from allocator.models.gguf_names import gguf_to_hf, hf_to_gguf  # noqa: F401
from allocator.patterns import anchored, exact_name_patterns, exact_names_regex  # noqa: F401
