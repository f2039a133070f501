"""The converted-model cache is keyed by file content, so clones and venvs share one entry."""

from __future__ import annotations

import os
import shutil

from allocator.models import loader


def test_cache_key_follows_the_bytes_not_the_path_or_mtime(tmp_path) -> None:
    first = tmp_path / "a" / "model.gguf"
    first.parent.mkdir()
    first.write_bytes(b"GGUF" + bytes(range(256)) * 4096)
    second = tmp_path / "b" / "model.gguf"
    second.parent.mkdir()
    shutil.copyfile(first, second)
    os.utime(second, ns=(1, 1))
    assert loader._file_fingerprint(first) == loader._file_fingerprint(second)

    changed = bytearray(first.read_bytes())
    changed[len(changed) // 2] ^= 0xFF
    second.write_bytes(bytes(changed))
    assert loader._file_fingerprint(first) != loader._file_fingerprint(second)
