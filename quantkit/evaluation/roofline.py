"""Roofline for decoding: how close is a variant's single-stream decode rate to the memory-
bandwidth bound (bandwidth / bytes read per generated token)?

Bytes per token are the weights (every decode step reads them all) plus the KV cache read at the
benchmark's context length. Bandwidth is measured here with a large array copy (numpy, one
thread: a conservative figure on machines whose bandwidth needs several cores to saturate).
"""

from __future__ import annotations

import time

import numpy as np


def measure_bandwidth_gbs(size_mib: int = 512, repeats: int = 5) -> float:
    """Best-of-`repeats` copy bandwidth in GB/s (bytes read + bytes written)."""
    src = np.ones(size_mib * 2**20, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch pages first
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def bound_tokens_per_s(bandwidth_gbs: float, weights_bytes: float, kv_bytes_per_token: float, context: int) -> float:
    bytes_per_token = weights_bytes + kv_bytes_per_token * context
    return bandwidth_gbs * 1e9 / bytes_per_token
