"""The R-serialization reader behind the default Jane Austen corpus."""

from __future__ import annotations

import struct
import zlib

import pytest

from allocator.errors import InputError
from allocator.models.corpus import parse_rdata, read_texts


def _xdr_strsxp(items: list[str | None], version: int = 3) -> bytes:
    out = b"X\n" + struct.pack(">iii", version, 0x040300, 0x030500)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(items))
    for item in items:
        if item is None:
            out += struct.pack(">ii", 9, -1)
        else:
            data = item.encode()
            out += struct.pack(">ii", 0x00040009, len(data)) + data
    return out


def _blob(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + zlib.compress(payload)


def test_parse_rdata_reads_every_novel_in_both_format_versions() -> None:
    data = _blob(_xdr_strsxp(["Persuasion", "Chapter 1", None, "Sir Walter"], version=3))
    data += _blob(_xdr_strsxp(["EMMA", "Emma Woodhouse"], version=2))
    novels = parse_rdata(data)
    assert novels == {"PERSUASION": "Chapter 1\n\nSir Walter", "EMMA": "Emma Woodhouse"}


def test_parse_rdata_skips_blobs_that_are_not_character_vectors() -> None:
    not_strings = b"X\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">ii", 14, 1) + b"\0" * 8
    data = _blob(not_strings) + _blob(_xdr_strsxp(["EMMA", "text"], version=2))
    assert list(parse_rdata(data)) == ["EMMA"]


def test_read_texts_names_missing_and_empty_files(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(InputError, match="no such file"):
        read_texts([tmp_path / "missing.txt"])
    with pytest.raises(InputError, match="empty"):
        read_texts([empty])
