"""Numeric arrays across the JSON-lines worker protocol, compactly (numpy only; no engine imports).

An array travels as {"dtype": "float32", "shape": [n, k], "b64": <base64 of its C-order bytes>}:
a few bytes per value instead of JSON's ~20 per float, and exact (no decimal round trip). Used for
the fidelity rows (top-K ids and log-probs per scored position), where 16k positions x K=128 would
otherwise be tens of MB of JSON text. Hand-written: the protocol is ours, and numpy's own formats
(npy/npz) need a file or an extra header parse for what is three fields.
"""

from __future__ import annotations

import base64

import numpy as np

ALLOWED = frozenset({"int32", "int64", "float32", "float64", "bool"})


def encode(arr) -> dict:
    a = np.ascontiguousarray(arr)
    if a.dtype.name not in ALLOWED:
        raise TypeError(f"cannot encode dtype {a.dtype.name}; allowed: {sorted(ALLOWED)}")
    return {"dtype": a.dtype.name, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode(obj: dict) -> np.ndarray:
    if obj.get("dtype") not in ALLOWED:
        raise TypeError(f"cannot decode dtype {obj.get('dtype')!r}")
    raw = base64.b64decode(obj["b64"])
    return np.frombuffer(raw, dtype=obj["dtype"]).reshape(obj["shape"]).copy()
