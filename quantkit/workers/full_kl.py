"""Ground truth for the fidelity tests: full-vocabulary KL(base || model) per scored position from
two GGUF models' raw llama.cpp logits. Runs in the `llamacpp` env (llama-cpp-python + numpy).

Usage: python -m quantkit.workers.full_kl BASE.gguf MODEL.gguf WINDOWS.json SCORE_FROM OUT.npz
WINDOWS.json is a list of token-id lists; OUT.npz gets `kl` [n] (float64, nats), `base_tail_k`
(the base's probability mass outside its own top-K for K in `ks`) and `ks`. Prints one JSON line.

It shares no code with the llama.cpp worker's `topk_logprobs` on purpose: it is the independent
check that the worker's top-K + tail figure is a lower bound within a stated gap of the truth.
"""

from __future__ import annotations

import json
import sys

KS = (100, 128, 1024, 4096)


def _logprobs(model_path: str, windows: list[list[int]], score_from: int):
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, verbose=False, logits_all=True, n_ctx=max(len(w) for w in windows) + 8)
    for w in windows:
        llm.reset()
        llm.eval(list(w))
        x = np.asarray(llm.scores[score_from - 1:len(w) - 1], dtype=np.float64)
        x -= x.max(axis=1, keepdims=True)
        x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
        yield x
    del llm


def main(base: str, model: str, windows_file: str, score_from: int, out: str) -> dict:
    import numpy as np

    with open(windows_file, encoding="utf-8") as f:
        windows = json.load(f)
    base_rows = [x.astype(np.float32) for x in _logprobs(base, windows, score_from)]  # 200 KB per position
    kls, tails = [], []
    for lp_base32, lq in zip(base_rows, _logprobs(model, windows, score_from)):
        lp = lp_base32.astype(np.float64)
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))  # renormalise after the float32 round trip
        p = np.exp(lp)
        kls.append(np.sum(p * (lp - lq), axis=1))
        srt = -np.sort(-p, axis=1)
        tails.append(np.stack([1.0 - srt[:, :k].sum(axis=1) for k in KS], axis=1))
    kl = np.concatenate(kls)
    np.savez(out, kl=kl, base_tail_k=np.concatenate(tails), ks=np.asarray(KS))
    return {"positions": len(kl), "kl_mean": float(kl.mean())}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], a[1], a[2], int(a[3]), a[4])), flush=True)
