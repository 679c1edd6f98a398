"""Fidelity to a baseline distribution, in the manner of `llama-perplexity --kl-divergence`.

Every model is scored on the same token windows (reference-tokenized evaluation text). As in
llama-perplexity, only the second half of each window is scored, so every scored token has at
least half a window of context.

What crosses the worker protocol (op `topk_logprobs`, see quantkit/workers/arrays.py) is, per
scored position, computed by the engine from its own full-vocabulary distribution:
  ids [n, K]          the baseline's own top-K ids (or, for a model compared with a baseline, the
                      baseline's ids, passed in)
  logprobs [n, K]     the engine's exact log-probabilities of those ids
  tail_logprob [n]    log of the engine's mass outside those ids (exact, float64, -inf if none)
  argmax [n]          the engine's own top-1 id
  token_logprob [n]   log-probability of the actual next token

KL divergence: P is the baseline, Q the model. Both sides are coarse-grained to the same K+1
outcomes: the baseline's top-K ids plus one bucket for everything else, with exact masses on both
sides. Merging outcomes never increases KL (data-processing inequality), so this is a true lower
bound on the full-vocabulary KL; the gap is exactly p_tail x KL(P|tail || Q|tail), the divergence
between the two tails' shapes, which shrinks as K grows. Nothing is estimated or filled in.
How large K must be depends on how peaked the model is. SmolLM2-135M on LAMBADA is diffuse: its
top-128 holds ~90% of the mass, and on real llama.cpp logits (f16 GGUF against Q8_0 / Q2_K) the
bound is 0.85 of the full KL at K=128, 0.96 at 1024 and 0.99 at 4096 (the default), where it agrees
with llama-perplexity within 2% (quantkit.evaluation.kl_crosscheck). `base_tail_mass` in every
result states how much mass the bound merged.

Standard errors treat positions as independent, as llama-perplexity does; neighbouring tokens are
correlated, so they are lower bounds.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from quantkit.workers import arrays

# Buckets of the baseline's top-1 probability for "KLD by confidence": where the baseline is sure,
# a quantized model should agree; divergence concentrated in confident positions hurts most.
CONFIDENCE_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0)

FIELDS = ("ids", "logprobs", "tail_logprob", "argmax", "token_logprob")
_DTYPES = {"ids": np.int32, "logprobs": np.float32, "tail_logprob": np.float64, "argmax": np.int32,
           "token_logprob": np.float64}


def windows(tokens: list[int], length: int, count: int) -> list[list[int]]:
    """Non-overlapping windows of `length` tokens from a token stream (as many as fit, up to count)."""
    n = min(count, len(tokens) // length)
    return [tokens[i * length:(i + 1) * length] for i in range(n)]


def score_from(window_len: int) -> int:
    """First scored position of a window: its second half (window_len // 2 .. window_len - 1)."""
    return window_len // 2


@dataclass
class TopK:
    """One engine's answer over all scored positions (rows of every window, concatenated)."""

    ids: np.ndarray
    logprobs: np.ndarray
    tail_logprob: np.ndarray
    argmax: np.ndarray
    token_logprob: np.ndarray
    per_window: list[int] = field(default_factory=list)  # scored positions per window, in order

    def __post_init__(self) -> None:
        for name in FIELDS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=_DTYPES[name]))
        n = len(self.ids)
        if self.ids.ndim != 2 or self.logprobs.shape != self.ids.shape:
            raise ValueError(f"ids {self.ids.shape} and logprobs {self.logprobs.shape} must both be [n, K]")
        for name in ("tail_logprob", "argmax", "token_logprob"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if not self.per_window:
            self.per_window = [n]
        if sum(self.per_window) != n:
            raise ValueError(f"per_window sums to {sum(self.per_window)}, not the {n} rows")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @classmethod
    def from_answers(cls, answers: list[dict]) -> TopK:
        """Concatenate a worker's per-sequence answers (dicts of encoded arrays)."""
        if not answers:
            raise ValueError("no sequences were scored")
        parts = {name: [arrays.decode(a[name]) for a in answers] for name in FIELDS}
        return cls(**{name: np.concatenate(parts[name]) for name in FIELDS},
                   per_window=[len(x) for x in parts["tail_logprob"]])

    @classmethod
    def concat(cls, parts: list[TopK]) -> TopK:
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in FIELDS},
                   per_window=[w for p in parts for w in p.per_window])

    def window_ids(self, start: int = 0, stop: int | None = None) -> list[dict]:
        """The ids of windows start..stop, encoded for a worker's `ref_ids` argument."""
        bounds = np.cumsum([0, *self.per_window])
        return [arrays.encode(self.ids[a:b]) for a, b in list(pairwise(bounds))[start:stop]]

    def slice_windows(self, start: int, stop: int) -> TopK:
        bounds = np.cumsum([0, *self.per_window])
        a, b = int(bounds[start]), int(bounds[stop])
        return TopK(**{name: getattr(self, name)[a:b] for name in FIELDS}, per_window=self.per_window[start:stop])

    def truncate(self, k: int) -> TopK:
        """The same answer coarse-grained to the first k ids: the ids k.. join the tail bucket
        (exactly: their log-probs are exact, so the merged tail mass is too)."""
        if not 1 <= k <= self.k:
            raise ValueError(f"cannot truncate K={self.k} to {k}")
        rest = self.logprobs[:, k:].astype(np.float64)
        with np.errstate(divide="ignore"):
            tail = np.logaddexp(self.tail_logprob, np.log(np.exp(rest).sum(axis=1)) if rest.size
                                else np.full(len(self), -np.inf))
        return TopK(self.ids[:, :k], self.logprobs[:, :k], tail, self.argmax, self.token_logprob, self.per_window)

    def save(self, path: Path) -> None:
        """Compact on disk (npz: int32 ids + float32 log-probs, ~1 KB per position at K=128),
        written atomically so an interrupted compare never leaves half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, per_window=np.asarray(self.per_window, dtype=np.int64),
                         **{name: getattr(self, name) for name in FIELDS})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> TopK:
        with np.load(path) as z:
            return cls(**{name: z[name] for name in FIELDS}, per_window=[int(x) for x in z["per_window"]])


def kl_per_position(base: TopK, model: TopK) -> np.ndarray:
    """KL(P_base || Q_model) per position over the base's top-K ids plus one tail bucket (nats).

    `model` must have been scored on the base's ids (its `ids` equal the base's). Exact zero for
    identical answers (same float32 values on both sides)."""
    if base.ids.shape != model.ids.shape or not np.array_equal(base.ids, model.ids):
        raise ValueError("the model was not scored on the baseline's top-K ids "
                         f"(ids {model.ids.shape} vs {base.ids.shape}, or different values)")
    kl = np.empty(len(base))
    for a in range(0, len(base), 1024):  # blocks: float64 copies of [n, K] at K=4096 would take GBs
        lp = base.logprobs[a:a + 1024].astype(np.float64)
        lq = model.logprobs[a:a + 1024].astype(np.float64)
        kl[a:a + 1024] = np.sum(np.exp(lp) * (lp - lq), axis=1)
    pt, qt = base.tail_logprob, model.tail_logprob
    has_tail = np.isfinite(pt)
    with np.errstate(invalid="ignore", over="ignore"):
        tail = np.where(has_tail, np.exp(np.where(has_tail, pt, 0.0)) * (pt - qt), 0.0)
    return kl + tail


def full_kl(base_logits: np.ndarray, model_logits: np.ndarray) -> np.ndarray:
    """Full-vocabulary KL per row from raw logits [n, V] (float64); the ground truth the tests and
    the cross-check compare the coarse-grained figure with."""
    lp = log_softmax(base_logits)
    lq = log_softmax(model_logits)
    return np.sum(np.exp(lp) * (lp - lq), axis=1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def topk_from_logits(logits: np.ndarray, tokens: np.ndarray, k: int, ids: np.ndarray | None = None) -> TopK:
    """The worker contract computed from full logits [n, V] (what the llama.cpp worker does; used
    by the tests to build answers from real or synthetic logits). `tokens[i]` is the token that
    row i predicts."""
    logp = log_softmax(logits)
    n = logp.shape[0]
    if ids is None:
        part = np.argpartition(-logp, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(logp, part, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(part, order, axis=1)
    ids = np.asarray(ids, dtype=np.int64)
    probs = np.exp(logp)
    np.put_along_axis(probs, ids, 0.0, axis=1)  # the tail is summed directly, never as 1 - top-K
    with np.errstate(divide="ignore"):
        tail = np.log(probs.sum(axis=1))
    rows = np.arange(n)
    return TopK(ids=ids, logprobs=np.take_along_axis(logp, ids, axis=1), tail_logprob=tail,
                argmax=logp.argmax(axis=1), token_logprob=logp[rows, np.asarray(tokens)])


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


@dataclass(frozen=True)
class Fidelity:
    """The statistics llama-perplexity prints, for one model against one baseline, on n positions."""

    n: int
    k: int
    ppl: float
    ppl_stderr: float
    ppl_ratio: float  # PPL(model) / PPL(base), llama-perplexity's "Mean PPL(Q)/PPL(base)"
    ppl_ratio_stderr: float  # paired: from the per-token NLL differences on the same tokens
    kld_mean: float
    kld_stderr: float
    kld_median: float
    kld_p90: float
    kld_p99: float
    kld_max: float
    top1: float  # same top-1 (argmax) as the baseline
    top1_stderr: float
    dp_mean: float  # Δp: probability of the actual token, model minus base
    dp_stderr: float
    dp_rms: float
    dp_rms_stderr: float
    by_confidence: tuple[dict, ...]  # KLD per bucket of the base's top-1 probability
    base_tail_mass: float  # mean probability mass of the base outside its top-K: how tight the bound is

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summarize(base: TopK, model: TopK) -> Fidelity:
    """Compare aligned answers of a baseline and a model (the model scored on the base's ids).

    Percentiles interpolate linearly between order statistics, as llama-perplexity does; top-1 and
    RMS Δp uncertainties use its formulas too, so the two tools' figures compare directly."""
    n = len(base)
    if n == 0 or len(model) != n:
        raise ValueError(f"misaligned rows: baseline {n}, model {len(model)}")
    kl = kl_per_position(base, model)
    kld_mean, kld_se = _mean_se(kl)
    p90, p99 = np.percentile(kl, [90, 99])
    nll = -model.token_logprob
    diff = nll - (-base.token_logprob)
    d_mean, d_se = _mean_se(diff)
    ratio = math.exp(d_mean)
    mean_nll, nll_se = _mean_se(nll)
    ppl = math.exp(mean_nll)
    same = (model.argmax == base.argmax).astype(np.float64)
    top1 = float(same.mean())
    top1_se = math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else 0.0
    dp = np.exp(model.token_logprob) - np.exp(base.token_logprob)
    dp_mean, dp_se = _mean_se(dp)
    ms, ms_se = _mean_se(dp * dp)
    rms = math.sqrt(ms)
    return Fidelity(
        n=n, k=base.k, ppl=ppl, ppl_stderr=ppl * nll_se, ppl_ratio=ratio, ppl_ratio_stderr=ratio * d_se,
        kld_mean=kld_mean, kld_stderr=kld_se, kld_median=float(np.median(kl)), kld_p90=float(p90),
        kld_p99=float(p99), kld_max=float(kl.max()), top1=top1, top1_stderr=top1_se,
        dp_mean=dp_mean, dp_stderr=dp_se, dp_rms=rms, dp_rms_stderr=0.5 / rms * ms_se if rms > 0 else 0.0,
        by_confidence=tuple(by_confidence(base, kl, same)),
        base_tail_mass=float(np.exp(base.tail_logprob).mean()))


def by_confidence(base: TopK, kl: np.ndarray, same: np.ndarray) -> list[dict]:
    """KLD mean (± se) and same-top-1 per bucket of the base's top-1 probability."""
    conf = np.exp(base.logprobs.max(axis=1).astype(np.float64))
    out = []
    for i, (lo, hi) in enumerate(pairwise(CONFIDENCE_EDGES)):
        last = i == len(CONFIDENCE_EDGES) - 2
        mask = (conf >= lo) & ((conf <= hi) if last else (conf < hi))
        m = int(mask.sum())
        mean, se = _mean_se(kl[mask]) if m else (None, None)
        out.append({"lo": lo, "hi": hi, "n": m, "kld_mean": mean, "kld_stderr": se,
                    "top1": float(same[mask].mean()) if m else None})
    return out


def intervals_overlap(a: float, a_se: float | None, b: float, b_se: float | None, z: float = 1.96) -> bool:
    """Do the two figures' z-standard-error intervals overlap (cannot be told apart this way)?"""
    if a_se is None or b_se is None:
        return False
    return abs(a - b) <= z * (a_se + b_se)


def below_floor(value: float, se: float | None, floor: float, floor_se: float | None, z: float = 1.96) -> bool:
    """Is a divergence within noise of (or under) a floor: indistinguishable from what the floor
    alone produces (engine arithmetic, or batch-composition noise)?"""
    return value <= floor + z * math.sqrt((se or 0.0) ** 2 + (floor_se or 0.0) ** 2)
