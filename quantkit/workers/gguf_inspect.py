"""Count a GGUF's tensor types and weights. Runs in the `llamacpp` env with the vendored gguf-py.

Usage: python -m quantkit.workers.gguf_inspect FILE.gguf   -> one JSON line
"""

from __future__ import annotations

import json
import sys
from collections import Counter


def inspect(path: str) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    n_elements = sum(int(t.n_elements) for t in reader.tensors)
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    ftype = reader.fields.get("general.file_type")
    return {
        "tensor_types": dict(sorted(types.items())),
        "tensors": len(reader.tensors),
        "parameters": n_elements,
        "tensor_bytes": n_bytes,
        "bits_per_weight": round(8 * n_bytes / n_elements, 3),
        "file_type": int(ftype.parts[-1][0]) if ftype is not None else None,
    }


if __name__ == "__main__":
    print(json.dumps(inspect(sys.argv[1])), flush=True)
