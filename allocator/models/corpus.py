"""Calibration and evaluation text: any text files, or Jane Austen's novels by default.

The default corpus comes from Debian's ``r-cran-janeaustenr`` package, fetched with
``apt-get download`` and unpacked with ``dpkg-deb``. Its ``data/Rdata.rdb`` is a sequence of
blobs, each a 4-byte big-endian length and a zlib stream holding one R-serialized character
vector (XDR format 2 or 3). The vector's first element is the novel's title; the rest are lines.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from allocator.errors import InputError, UnsupportedError

DEBIAN_PACKAGE = "r-cran-janeaustenr"
RDB_PATH = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
CALIBRATION_NOVELS = ("PRIDE AND PREJUDICE", "SENSE AND SENSIBILITY")
EVALUATION_NOVEL = "PERSUASION"
STRSXP = 16


def cache_dir() -> Path:
    """Root of allocator's caches (``$ALLOCATOR_CACHE`` or ``~/.cache/allocator``)."""
    return Path(os.environ.get("ALLOCATOR_CACHE", Path.home() / ".cache" / "allocator"))


def _read_strsxp(payload: bytes) -> list[str | None]:
    """Decode an XDR R serialization whose top object is a character vector."""
    if payload[:2] != b"X\n":
        raise ValueError("not an XDR R serialization")
    pos = 2
    version = struct.unpack(">i", payload[pos : pos + 4])[0]
    pos += 12  # version, writer R version, minimal reader version
    if version == 3:
        n_enc = struct.unpack(">i", payload[pos : pos + 4])[0]
        pos += 4 + n_enc
    flags = struct.unpack(">i", payload[pos : pos + 4])[0]
    pos += 4
    if flags & 0xFF != STRSXP:
        raise ValueError(f"expected a character vector (type 16), got type {flags & 0xFF}")
    length = struct.unpack(">i", payload[pos : pos + 4])[0]
    pos += 4
    out: list[str | None] = []
    for _ in range(length):
        pos += 4  # CHARSXP flags
        n = struct.unpack(">i", payload[pos : pos + 4])[0]
        pos += 4
        if n == -1:
            out.append(None)
            continue
        out.append(payload[pos : pos + n].decode("utf-8", errors="replace"))
        pos += n
    return out


def parse_rdata(data: bytes) -> dict[str, str]:
    """Split an Rdata.rdb into {title: text}; blobs that are not character vectors are skipped."""
    novels: dict[str, str] = {}
    pos = 0
    while pos + 4 < len(data):
        pos += 4  # uncompressed length
        decomp = zlib.decompressobj()
        payload = decomp.decompress(data[pos:])
        consumed = len(data) - pos - len(decomp.unused_data)
        pos += consumed
        try:
            lines = _read_strsxp(payload)
        except (ValueError, struct.error):
            continue
        if len(lines) < 2 or lines[0] is None:
            continue
        body = "\n".join(line or "" for line in lines[1:])
        novels[lines[0].strip().upper()] = body
    return novels


def _fetch_rdb(target: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise UnsupportedError(
            "the default Jane Austen corpus needs apt-get and dpkg-deb (Debian/Ubuntu); "
            "pass your own text with --text FILE instead"
        )
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, capture_output=True, text=True
        )
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise UnsupportedError(
                f"could not download {DEBIAN_PACKAGE} with apt-get ({result.stderr.strip()[-300:]}); "
                "run 'apt-get update' first, or pass your own text with --text FILE"
            )
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "x" / RDB_PATH, target)


def jane_austen_novels() -> dict[str, str]:
    """The six novels as {UPPERCASE TITLE: text}, downloading the Debian package once into the cache."""
    rdb = cache_dir() / "janeaustenr" / "Rdata.rdb"
    if not rdb.is_file():
        _fetch_rdb(rdb)
    return parse_rdata(rdb.read_bytes())


PYDOC_META = "python3-doc"
PYDOC_CALIBRATION = ("tutorial", "howto")
PYDOC_EVALUATION = ("faq", "reference")
NAMED_TEXTS = {
    "austen-calib": "Pride and Prejudice + Sense and Sensibility (Debian r-cran-janeaustenr)",
    "austen-eval": "Persuasion (Debian r-cran-janeaustenr)",
    "pydoc-calib": "Python docs: tutorial + howto (reStructuredText sources, Debian python3-doc)",
    "pydoc-eval": "Python docs: faq + language reference (held out from pydoc-calib)",
}


def _python_doc_package() -> str:
    """The versioned package behind Debian's python3-doc (e.g. python3.11-doc)."""
    result = subprocess.run(
        ["apt-cache", "depends", PYDOC_META], capture_output=True, text=True, check=False
    )
    for line in result.stdout.splitlines():
        name = line.split(":", 1)[-1].strip()
        if (
            line.strip().startswith("Depends:")
            and name.startswith("python3.")
            and name.endswith("-doc")
        ):
            return name
    raise UnsupportedError(
        f"could not resolve {PYDOC_META} with apt-cache ({result.stderr.strip()[-200:]}); "
        "run 'apt-get update' first, or pass your own text files"
    )


def python_docs() -> dict[str, str]:
    """Python's documentation sources as {section folder: text}, fetched once into the cache."""
    folder = cache_dir() / "pydoc"
    if not (folder / "done").is_file():
        package = _python_doc_package()
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["apt-get", "download", package], cwd=tmp, capture_output=True, check=False
            )
            debs = list(Path(tmp).glob("*.deb"))
            if not debs:
                raise UnsupportedError(
                    f"could not download {package} with apt-get; run apt-get update"
                )
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
            sources = next((Path(tmp) / "x" / "usr/share/doc").glob("python3*/html/_sources"))
            folder.mkdir(parents=True, exist_ok=True)
            for section in (*PYDOC_CALIBRATION, *PYDOC_EVALUATION):
                files = sorted((sources / section).glob("*.txt"))
                text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
                (folder / f"{section}.txt").write_text(text, encoding="utf-8")
            (folder / "done").write_text(package + "\n")
    return {p.stem: p.read_text(encoding="utf-8") for p in folder.glob("*.txt")}


def named_text(name: str) -> str:
    """A built-in corpus by name (see NAMED_TEXTS)."""
    if name == "austen-calib":
        return default_calibration_text()
    if name == "austen-eval":
        return default_evaluation_text()
    docs = python_docs()
    sections = PYDOC_CALIBRATION if name == "pydoc-calib" else PYDOC_EVALUATION
    return "\n\n".join(docs[s] for s in sections)


def read_texts(paths: Iterable[str | os.PathLike[str]]) -> str:
    """Concatenate text files (or built-in corpora named in NAMED_TEXTS); a missing or empty
    file is an InputError naming it."""
    parts = []
    for path in paths:
        if str(path) in NAMED_TEXTS and not Path(path).exists():
            parts.append(named_text(str(path)))
            continue
        p = Path(path)
        if not p.is_file():
            raise InputError(
                f"--text {p}: no such file; check the path or name a built-in text "
                f"({', '.join(NAMED_TEXTS)})"
            )
        text = p.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise InputError(f"--text {p}: the file is empty; give a file with text")
        parts.append(text)
    return "\n\n".join(parts)


def default_calibration_text() -> str:
    novels = jane_austen_novels()
    return "\n\n".join(novels[t] for t in CALIBRATION_NOVELS)


def default_evaluation_text() -> str:
    return jane_austen_novels()[EVALUATION_NOVEL]
