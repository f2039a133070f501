"""Loading models, finding their units, and the calibration/evaluation corpora.

Importing this package (every path to transformers in allocator goes through it) drops two
known lines of third-party noise that would otherwise open every command's output, at their
source loggers and nothing else: transformers imports torchao eagerly when it is installed (the
``export`` extra), and torchao then logs "Failed to load ..." for each optional CUDA/C++
extension this torch build cannot load (torchao falls back to its Python paths) and registers
enums with torch's pytree the deprecated way ("... is an Enum subclass ..."). Set
``ALLOCATOR_LIBRARY_LOGS=1`` to see them.
"""

from __future__ import annotations

import logging
import os

# logger -> text of the one message dropped from it
KNOWN_NOISE = {
    "torchao": "Failed to load",
    "torch.utils._pytree": "is an Enum subclass and is now natively supported",
}


class _DropKnownNoise(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


def quiet_library_logs() -> None:
    """Install the filters (idempotent; a no-op with ``ALLOCATOR_LIBRARY_LOGS`` set)."""
    if os.environ.get("ALLOCATOR_LIBRARY_LOGS"):
        return
    for name, text in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise(text))


quiet_library_logs()
