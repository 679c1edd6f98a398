"""A tiny stdlib engine worker for the contract tests: speaks quantkit.workers.protocol and answers
every op typed in quantkit.workers.contract, over a made-up model whose next-token distribution is a
fixed function of the previous token (so every answer can be checked by hand).

Usage: python -m tests.plugins.dummy_worker '<json settings>'  (model: a folder with dummy.json)
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import sys
import time
from array import array

from quantkit.workers.procinfo import peak_rss
from quantkit.workers.protocol import claim_stdout, serve

EOS = 0
_TYPECODES = {"int32": "i", "int64": "q", "float32": "f", "float64": "d"}


def encode(values, dtype: str, shape: list[int]) -> dict:
    """quantkit.workers.arrays' format, without numpy."""
    return {"dtype": dtype, "shape": shape, "b64": base64.b64encode(array(_TYPECODES[dtype], values).tobytes()).decode()}


def decode(obj: dict) -> tuple[list, list[int]]:
    a = array(_TYPECODES[obj["dtype"]])
    a.frombytes(base64.b64decode(obj["b64"]))
    return a.tolist(), obj["shape"]


class Model:
    def __init__(self, vocab: int):
        self.vocab = vocab

    def logits(self, prev: int) -> list[float]:
        return [((prev * 31 + j * 17 + (prev * j) % 13) % 23) / 4.0 for j in range(self.vocab)]

    def logprobs(self, prev: int) -> list[float]:
        x = self.logits(prev)
        m = max(x)
        z = m + math.log(sum(math.exp(v - m) for v in x))
        return [v - z for v in x]


def main(settings: dict) -> None:
    out = claim_stdout()
    t0 = time.time()
    model_dir = settings.pop("model")
    with open(os.path.join(model_dir, "dummy.json"), encoding="utf-8") as f:
        spec = json.load(f)
    model = Model(int(spec["vocab"]))
    n_ctx = int(settings.get("n_ctx", 256))
    load_seconds = time.time() - t0
    print(f"dummy engine loaded {model_dir} (vocab {model.vocab}, n_ctx {n_ctx})", file=sys.stderr, flush=True)

    def text_of(ids: list[int]) -> str:
        return "".join(f" t{i}" for i in ids)

    def generate(prompts: list[list[int]], temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1,
                 max_tokens: int = 64, seed: int | None = None, stop: list[str] | None = None, n: int = 1) -> list:
        results = []
        for prompt in prompts:
            samples = []
            for i in range(1 if temperature == 0 else n):
                rng = random.Random(None if seed is None else seed + i)
                ids: list[int] = []
                finish = "length"
                prev = prompt[-1] if prompt else EOS
                while len(ids) < max_tokens:
                    lp = model.logprobs(prev)
                    if temperature == 0:
                        tok = max(range(model.vocab), key=lambda j: (lp[j], -j))
                    else:
                        weights = [math.exp(v / temperature) for v in lp]
                        tok = rng.choices(range(model.vocab), weights)[0]
                    if tok == EOS:
                        finish = "stop"
                        break
                    ids.append(tok)
                    prev = tok
                    if stop and any(s in text_of(ids) for s in stop):
                        finish = "stop"
                        break
                samples.append({"text": text_of(ids), "token_ids": ids, "finish_reason": finish})
            results.append(samples * n if temperature == 0 else samples)
        return results

    def logprobs(sequences: list[list[int]], top_k: int = 20) -> list:
        out_all = []
        for ids in sequences:
            rows = []
            for pos in range(1, len(ids)):
                lp = model.logprobs(ids[pos - 1])
                top = sorted(range(model.vocab), key=lambda j: (-lp[j], j))[:top_k]
                rows.append({"token": lp[ids[pos]], "top": [[j, lp[j]] for j in top]})
            out_all.append(rows)
        return out_all

    def topk_logprobs(sequences: list[list[int]], score_from: int, top_k: int,
                      ref_ids: list[dict] | None = None) -> list[dict]:
        if ref_ids is not None and len(ref_ids) != len(sequences):
            raise ValueError(f"ref_ids has {len(ref_ids)} entries for {len(sequences)} sequences")
        answers = []
        for s, seq in enumerate(sequences):
            if not 1 <= score_from < len(seq):
                raise ValueError(f"score_from {score_from} outside 1..{len(seq) - 1}")
            n = len(seq) - score_from
            given = None
            if ref_ids is not None:
                flat, shape = decode(ref_ids[s])
                if shape[0] != n:
                    raise ValueError(f"ref_ids[{s}] has shape {shape}, expected ({n}, K)")
                given = [flat[r * shape[1]:(r + 1) * shape[1]] for r in range(n)]
            ids_all: list[int] = []
            lps: list[float] = []
            tails: list[float] = []
            argmaxes: list[int] = []
            tokens: list[float] = []
            k = min(top_k, model.vocab) if given is None else len(given[0])
            for r, pos in enumerate(range(score_from, len(seq))):
                lp = model.logprobs(seq[pos - 1])
                ids = given[r] if given is not None else sorted(range(model.vocab), key=lambda j: (-lp[j], j))[:k]
                rest = [lp[j] for j in range(model.vocab) if j not in set(ids)]
                m = max(rest) if rest else 0.0
                tails.append(m + math.log(sum(math.exp(v - m) for v in rest)) if rest else -math.inf)
                ids_all += ids
                lps += [lp[j] for j in ids]
                argmaxes.append(max(range(model.vocab), key=lambda j: (lp[j], -j)))
                tokens.append(lp[seq[pos]])
            answers.append({"ids": encode(ids_all, "int32", [n, k]), "logprobs": encode(lps, "float32", [n, k]),
                            "tail_logprob": encode(tails, "float64", [n]), "argmax": encode(argmaxes, "int32", [n]),
                            "token_logprob": encode(tokens, "float64", [n])})
        return answers

    def bench(prompts: list[list[int]], max_tokens: int, repeats: int = 3) -> dict:
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            outs = generate(prompts, max_tokens=max_tokens)
            runs.append({"seconds": time.perf_counter() - t,
                         "output_tokens": sum(len(o[0]["token_ids"]) for o in outs)})
        return {"runs": runs, "sequences": len(prompts), "method": "dummy: one prompt after another"}

    def memory() -> dict:
        with open("/proc/self/status", encoding="ascii") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        return {"rss_bytes": rss, "peak_rss_bytes": peak_rss(os.getpid()), "pids": [os.getpid()], "n_ctx": n_ctx}

    def info() -> dict:
        return {"engine": "dummy", "version": "0", "model": model_dir, "load_seconds": load_seconds,
                "pid": os.getpid(), "n_vocab": model.vocab}

    serve({"generate": generate, "logprobs": logprobs, "topk_logprobs": topk_logprobs, "bench": bench,
           "memory": memory, "info": info}, out)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
