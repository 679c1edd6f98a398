"""Read tensor shapes and byte sizes from safetensors headers, without loading weights.

Hand-written because the format's header is 8 bytes of length plus JSON, and the `safetensors`
package (with torch or numpy backends) would load far more than we need in the core.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path


def tensors(folder: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape", "bytes"} for every tensor of every *.safetensors in `folder`."""
    out: dict[str, dict] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            out[name] = {"dtype": meta["dtype"], "shape": meta["shape"], "bytes": end - start}
    return out


def parameter_count(folder: Path) -> int:
    return sum(prod(t["shape"]) for t in tensors(folder).values())


def tensor_bytes(folder: Path) -> int:
    return sum(t["bytes"] for t in tensors(folder).values())


def dtype_counts(folder: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tensors(folder).values():
        counts[t["dtype"]] = counts.get(t["dtype"], 0) + 1
    return dict(sorted(counts.items()))
