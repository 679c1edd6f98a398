"""The lm-eval Scorer over an engine worker: reference tokenization, engine log-probs and generation."""

from __future__ import annotations

from pathlib import Path

from quantkit import prompts
from quantkit.execution.worker_client import WorkerClient


CHUNK = 256  # requests per worker call: bounded messages, steady progress


class WorkerScorer:
    def __init__(self, worker: WorkerClient, tokenizer_dir: Path):
        self.worker, self.tokenizer_dir = worker, tokenizer_dir

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        items = [prompts.plain(t, add_special_tokens=False) for t in texts]
        return [list(p.token_ids) for p in prompts.render(self.tokenizer_dir, items)]

    def loglikelihood(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        sequences = [ctx + cont for ctx, cont in pairs]
        rows = []
        for i in range(0, len(sequences), CHUNK):
            rows += self.worker.call("logprobs", sequences=sequences[i:i + CHUNK], top_k=1)
        out = []
        for (ctx, cont), per_pos in zip(pairs, rows):
            if not ctx:  # position 0 has no prediction; lm-eval would prepend BOS/EOS, which we do not
                raise ValueError("a loglikelihood request with an empty context cannot be scored")
            tail = per_pos[len(ctx) - 1:]  # predictions of the continuation tokens
            logprob = sum(r["token"] for r in tail)
            greedy = all(int(r["top"][0][0]) == tok for r, tok in zip(tail, cont))
            out.append((logprob, greedy))
        return out

    def generate(self, prompts_ids: list[list[int]], until: list[str], max_tokens: int) -> list[str]:
        texts = []
        for i in range(0, len(prompts_ids), CHUNK):
            outs = self.worker.call("generate", prompts=prompts_ids[i:i + CHUNK], temperature=0.0,
                                    max_tokens=max_tokens, stop=until or None, seed=0)
            texts += [o[0]["text"] for o in outs]
        return texts
