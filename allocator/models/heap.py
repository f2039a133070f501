"""Give freed heap memory back to the operating system (glibc's ``malloc_trim``).

Large tensors freed by torch often stay in the process's heap (glibc raises its mmap threshold
after such frees), so the resident size keeps the high-water mark of every temporary. Offloaded
runs free a block's weights after each block and tokenization frees a whole text's encoding;
trimming after those keeps the peak to what is really live. A no-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Release free heap pages to the OS; True when glibc did so."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
