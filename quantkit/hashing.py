"""Content hashes that identify models and variants."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_sha256(folder: Path, skip: tuple[str, ...] = ()) -> str:
    """Hash of every file's relative path and content, in sorted order (manifests skipped)."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        rel = p.relative_to(folder).as_posix()
        if rel in skip or rel.startswith("."):
            continue
        h.update(rel.encode() + b"\0" + file_sha256(p).encode() + b"\0")
    return h.hexdigest()
