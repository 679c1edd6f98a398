"""Roofline for decoding: how close is a variant's single-stream decode rate to the memory-
bandwidth bound (bandwidth / bytes read per generated token)?

Bytes per token are the weights (every decode step reads them all) plus the KV cache read at the
benchmark's context length. Bandwidth is measured here with large array copies (numpy, one copy
per core in threads, as numpy releases the GIL while copying): the best of one thread and all
threads, since one core rarely saturates memory. Hand-written: no library measures this.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def measure_bandwidth_gbs(size_mib: int = 512, repeats: int = 5) -> tuple[float, int]:
    """(best copy bandwidth in GB/s counting bytes read + written, threads that reached it)."""
    threads = max(os.cpu_count() or 1, 1)
    src = np.ones(size_mib * 2**20, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch pages first
    best: tuple[float, int] = (0.0, 1)
    for n in sorted({1, threads}):
        bounds = [(k * src.size // n, (k + 1) * src.size // n) for k in range(n)]
        chunks = [(dst[a:b], src[a:b]) for a, b in bounds]
        with ThreadPoolExecutor(n) as pool:
            for _ in range(repeats):
                t = time.perf_counter()
                list(pool.map(lambda c: np.copyto(*c), chunks))
                gbs = 2 * src.nbytes / (time.perf_counter() - t) / 1e9
                best = max(best, (gbs, n))
    return best


def bound_tokens_per_s(bandwidth_gbs: float, weights_bytes: float, kv_bytes_per_token: float, context: int) -> float:
    bytes_per_token = weights_bytes + kv_bytes_per_token * context
    return bandwidth_gbs * 1e9 / bytes_per_token


def fraction_of_bound(decode_tokens_per_s: float, bound_tokens_per_s: float) -> float:
    """Measured decode rate over the bound. Above 1 the measurement is broken - a decode cannot read
    its weights faster than memory delivers them (on the 4-layer model, per-event timestamps once
    gave 97.6) - so it raises instead of returning a figure; the caller records the roofline failed
    with this reason."""
    from quantkit.errors import QuantkitError

    if not bound_tokens_per_s > 0:
        raise QuantkitError(f"roofline not computed: no memory-bandwidth bound to compare with "
                            f"({bound_tokens_per_s!r} tok/s)")
    if not decode_tokens_per_s > 0:
        raise QuantkitError(f"roofline not computed: decode rate {decode_tokens_per_s!r} tok/s")
    fraction = decode_tokens_per_s / bound_tokens_per_s
    if not fraction <= 1:
        raise QuantkitError(f"broken measurement: the decode rate {decode_tokens_per_s:.1f} tok/s is {fraction:.2f}x "
                            f"the memory-bandwidth bound {bound_tokens_per_s:.1f} tok/s (a fraction of {fraction:.2f}, "
                            f"outside (0, 1]: check the serving TPOT, the bytes per token or the bandwidth)")
    return fraction
