"""The lm-eval Scorer over an engine worker: reference tokenization, engine log-probs and generation."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from quantkit import prompts
from quantkit.execution.worker_client import WorkerClient

CHUNK = 256  # requests per worker call: bounded messages, steady progress


class WorkerScorer:
    """Every request type reaches the worker in as few calls as possible (CHUNK requests each):
    lm-eval hands the adapter all requests of a type at once (quantkit.evaluation.tasks), the
    texts are rendered by the reference tokenizer in one call, and the engine batches them.

    `stats` adds up, per operation, the wall seconds, calls and requests, and for generation the
    tokens made and why each generation ended (stop string / EOS, or the token budget): where a
    task's time went (quantkit.benchmarks.task_time)."""

    def __init__(self, worker: WorkerClient, tokenizer_dir: Path):
        self.worker, self.tokenizer_dir = worker, tokenizer_dir
        self.stats: dict[str, dict] = {}

    def _count(self, op: str, seconds: float, requests: int, **extra: int) -> None:
        s = self.stats.setdefault(op, Counter())
        s.update({"seconds": seconds, "calls": 1, "requests": requests, **extra})

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        t0 = time.perf_counter()
        items = [prompts.plain(t, add_special_tokens=False) for t in texts]
        ids = [list(p.token_ids) for p in prompts.render(self.tokenizer_dir, items)]
        self._count("tokenize", time.perf_counter() - t0, len(texts), tokens=sum(map(len, ids)))
        return ids

    def loglikelihood(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        t0 = time.perf_counter()
        sequences = [context + cont for context, cont in pairs]
        rows = []
        for i in range(0, len(sequences), CHUNK):
            rows += self.worker.call("logprobs", sequences=sequences[i:i + CHUNK], top_k=1)
        out = []
        for (context, cont), per_pos in zip(pairs, rows):
            if not context:  # position 0 has no prediction; lm-eval would prepend BOS/EOS, which we do not
                raise ValueError("a loglikelihood request with an empty context cannot be scored")
            tail = per_pos[len(context) - 1:]  # predictions of the continuation tokens
            logprob = sum(r["token"] for r in tail)
            greedy = all(int(r["top"][0][0]) == tok for r, tok in zip(tail, cont))
            out.append((logprob, greedy))
        self._count("loglikelihood", time.perf_counter() - t0, len(pairs), tokens=sum(map(len, sequences)))
        return out

    def generate(self, prompts_ids: list[list[int]], until: list[str], max_tokens: int) -> list[str]:
        t0 = time.perf_counter()
        texts: list[str] = []
        made, ends = 0, Counter[str]()
        for i in range(0, len(prompts_ids), CHUNK):
            outs = self.worker.call("generate", prompts=prompts_ids[i:i + CHUNK], temperature=0.0,
                                    max_tokens=max_tokens, stop=until or None, seed=0)
            texts += [o[0]["text"] for o in outs]
            made += sum(len(o[0].get("token_ids", ())) for o in outs)
            ends.update(f"finish_{o[0].get('finish_reason')}" for o in outs)
        self._count("generate", time.perf_counter() - t0, len(prompts_ids), prompt_tokens=sum(map(len, prompts_ids)),
                    output_tokens=made, **ends)
        return texts
