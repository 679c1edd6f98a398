"""Fidelity to the reference, in the manner of `llama-perplexity --kl-divergence`.

Every variant is scored on the same token windows (reference-tokenized evaluation text). As in
llama-perplexity, only the second half of each window is scored, so every scored token has at
least half a window of context. Per scored position we keep the engine's top-k log-probs.

KL divergence from top-k (an approximation, stated here and in the leaderboard notes): engines
return only the top-k of each distribution (vLLM caps prompt log-probs; llama.cpp gives full
logits, which we truncate for uniformity). We compute KL on a coarse-grained distribution: the
reference's top-k tokens plus one "everything else" bucket. By the data-processing inequality
this never exceeds the full-vocabulary KL when the variant's probabilities of those k tokens are
exact; where a reference top-k token is missing from the variant's top-k, its probability is
estimated by spreading the variant's leftover mass uniformly over the rest of the vocabulary.
With k=20 on a 49k vocabulary the reference top-k typically holds >90% of the mass, so the
missing part is the tail's shape, not its weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-12


def windows(tokens: list[int], length: int, count: int) -> list[list[int]]:
    """Non-overlapping windows of `length` tokens from a token stream (as many as fit, up to count)."""
    n = min(count, len(tokens) // length)
    return [tokens[i * length:(i + 1) * length] for i in range(n)]


def scored_slice(rows: list[dict], window_len: int) -> list[dict]:
    """Rows are per predicted position 1..L-1; keep predictions of the window's second half."""
    first = window_len // 2 - 1
    return rows[first:]


def kl_position(ref_top: list[list], var_top: list[list], vocab_size: int) -> float:
    """Coarse-grained KL(P_ref || P_var) over the reference top-k plus a tail bucket (natural log)."""
    p_ids = [int(t) for t, _ in ref_top]
    p = np.exp(np.array([lp for _, lp in ref_top], dtype=np.float64))
    # np.exp for both sides: identical inputs must give exactly zero, not 1e-18
    q_map = {int(t): float(v) for (t, _), v in zip(var_top, np.exp([lp for _, lp in var_top]))}
    q_known = sum(q_map.values())
    missing_slots = max(vocab_size - len(q_map), 1)
    q_fill = max(1.0 - q_known, 0.0) / missing_slots
    q = np.array([q_map.get(t, q_fill) for t in p_ids], dtype=np.float64)
    p_tail = max(1.0 - p.sum(), 0.0)
    q_tail = max(1.0 - q.sum(), 0.0)
    kl = float(np.sum(p * (np.log(np.maximum(p, EPS)) - np.log(np.maximum(q, EPS)))))
    if p_tail > EPS:
        kl += p_tail * (math.log(p_tail) - math.log(max(q_tail, EPS)))
    return max(kl, 0.0)


@dataclass(frozen=True)
class FidelityResult:
    n: int
    ppl: float
    ppl_stderr: float
    kld_mean: float
    kld_stderr: float
    kld_p99: float
    top1: float
    top1_stderr: float
    ppl_ratio: float  # PPL(variant) / PPL(reference), as llama-perplexity's "Mean PPL(Q)/PPL(base)"
    ppl_ratio_stderr: float  # paired: from the per-token NLL differences on the same tokens


def summarize(ref_rows: list[dict], var_rows: list[dict], vocab_size: int) -> FidelityResult:
    """Compare aligned per-position rows ({"token": lp, "top": [[id, lp], ...]}) of reference and variant.

    Standard errors treat positions as independent, as llama-perplexity does; neighbouring tokens
    are correlated, so they are lower bounds.
    """
    if len(ref_rows) != len(var_rows) or not ref_rows:
        raise ValueError(f"misaligned rows: reference {len(ref_rows)}, variant {len(var_rows)}")
    nll = np.array([-r["token"] for r in var_rows], dtype=np.float64)
    kls = np.array([kl_position(r["top"], v["top"], vocab_size) for r, v in zip(ref_rows, var_rows)])
    agree = np.array([int(r["top"][0][0]) == int(v["top"][0][0]) for r, v in zip(ref_rows, var_rows)], dtype=float)
    ref_nll = np.array([-r["token"] for r in ref_rows], dtype=np.float64)
    n = len(nll)
    diff = nll - ref_nll
    diff_se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    ratio = math.exp(float(diff.mean()))
    mean_nll = float(nll.mean())
    nll_se = float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    ppl = math.exp(mean_nll)
    top1 = float(agree.mean())
    return FidelityResult(
        n=n, ppl=ppl, ppl_stderr=ppl * nll_se,  # delta method
        kld_mean=float(kls.mean()), kld_stderr=float(kls.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        kld_p99=float(np.percentile(kls, 99)), top1=top1, top1_stderr=math.sqrt(top1 * (1 - top1) / n),
        ppl_ratio=ratio, ppl_ratio_stderr=ratio * diff_se,  # delta method
    )
