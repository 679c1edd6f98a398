"""llama.cpp engine worker: runs inside the `llamacpp` env, speaks quantkit.workers.protocol.

Usage: python -m quantkit.engines.llamacpp.worker '<json engine settings>'
"""

from __future__ import annotations

import json
import os
import sys
import time

from quantkit.workers.procinfo import peak_rss
from quantkit.workers.protocol import claim_stdout, serve


def main(settings: dict) -> None:
    out = claim_stdout()
    import llama_cpp
    from llama_cpp import Llama

    t0 = time.time()
    model = settings.pop("model")
    kv = {"type_k": settings.pop("cache_type_k"), "type_v": settings.pop("cache_type_v")}
    kv_ids = {k: getattr(llama_cpp, f"GGML_TYPE_{v.upper()}") for k, v in kv.items()}
    llm = Llama(model_path=model, verbose=False, logits_all=True, **kv_ids, **settings)
    load_seconds = time.time() - t0

    def generate(prompts: list[list[int]], temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1,
                 max_tokens: int = 64, seed: int | None = None, stop: list[str] | None = None, n: int = 1) -> list:
        """llama.cpp's own sampling loop (Llama.generate) so that token ids come back with the text.
        Sample i is seeded with seed + i (vLLM's convention for n > 1); greedy samples are identical
        by definition, so one is generated and repeated, as the vLLM worker does."""
        eos = llm.token_eos()
        draws = 1 if temperature == 0 else n
        results = []
        for prompt in prompts:
            samples = []
            for i in range(draws):
                if seed is not None:
                    llm.set_seed(seed + i)
                ids: list[int] = []
                finish = "length"
                text = ""
                for tok in llm.generate(list(prompt), temp=temperature, top_p=top_p,
                                        top_k=top_k if top_k > 0 else 0, min_p=0.0, reset=True):
                    if tok == eos or llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                        finish = "stop"
                        break
                    ids.append(tok)
                    text = llm.detokenize(ids).decode("utf-8", errors="replace")
                    if stop and any(s in text for s in stop):
                        text = text[: min(text.index(s) for s in stop if s in text)]
                        finish = "stop"
                        break
                    if len(ids) >= max_tokens:
                        break
                samples.append({"text": text, "token_ids": ids, "finish_reason": finish})
            results.append(samples * n if draws == 1 else samples)
        return results

    def logprobs(sequences: list[list[int]], top_k: int = 20) -> list:
        """For each sequence, per position i>=1: {"token": logprob of ids[i], "top": [[id, logprob], ...]}.

        llama.cpp returns full logits for every position, so the top-k here is a truncation we
        choose for uniformity with vLLM, not the engine's limit."""
        import numpy as np

        out_all = []
        for token_ids in sequences:
            llm.reset()
            llm.eval(token_ids)
            logits = np.asarray(llm.scores[: len(token_ids)], dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            rows = []
            for pos in range(1, len(token_ids)):
                dist = logp[pos - 1]
                top = np.argpartition(-dist, top_k)[:top_k]
                top = top[np.argsort(-dist[top])]
                rows.append({"token": float(dist[token_ids[pos]]), "top": [[int(t), float(dist[t])] for t in top]})
            out_all.append(rows)
        return out_all

    def bench(prompts: list[list[int]], max_tokens: int, repeats: int = 3) -> dict:
        """Offline throughput: prompts one after another (llama-cpp-python has one sequence), a fixed
        number of output tokens (EOS ignored), greedy. Each run also reports its decode phase alone
        (first token to last), which is what `llama-bench`'s tg measures."""
        def one(prompt: list[int]) -> tuple[int, float]:
            n, first = 0, 0.0
            llm.reset()  # no KV prefix reuse from the previous run: every run pays its full prefill
            for _ in llm.generate(list(prompt), temp=0.0, top_k=1, min_p=0.0, reset=True):
                n += 1
                if n == 1:
                    first = time.perf_counter()
                if n >= max_tokens:
                    break
            return n, time.perf_counter() - first

        one(prompts[0][:8])  # warm-up
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            done = [one(p) for p in prompts]
            runs.append({"seconds": time.perf_counter() - t, "output_tokens": sum(n for n, _ in done),
                         "decode_tokens": sum(n - 1 for n, _ in done), "decode_seconds": sum(d for _, d in done)})
        return {"runs": runs}

    def memory() -> dict:
        import psutil

        proc = psutil.Process()
        return {"rss_bytes": proc.memory_info().rss, "peak_rss_bytes": peak_rss(proc.pid),
                "n_ctx": llm.n_ctx(), "weights_bytes": int(llama_cpp.llama_model_size(llm.model))}

    def info() -> dict:
        return {"engine": "llama.cpp", "version": llama_cpp.__version__, "model": model,
                "load_seconds": load_seconds, "pid": os.getpid()}

    serve({"generate": generate, "logprobs": logprobs, "bench": bench, "memory": memory, "info": info}, out)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
