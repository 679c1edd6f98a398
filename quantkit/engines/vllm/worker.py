"""vLLM engine worker: runs inside the `vllm` env, speaks quantkit.workers.protocol.

Usage: python -m quantkit.engines.vllm.worker '<json engine settings>'
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

from quantkit.workers.procinfo import peak_rss
from quantkit.workers.protocol import claim_stdout, serve


def main(settings: dict) -> None:
    out = claim_stdout()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from quantkit.engines.vllm.topk import KEY as TOPK_KEY

    t0 = time.time()
    model = settings.pop("model")
    # The mixin that lets `topk_logprobs` hook vLLM's own logits pass (see quantkit/engines/vllm/topk.py).
    settings.setdefault("worker_extension_cls", "quantkit.engines.vllm.topk.TopkWorkerExtension")
    llm = LLM(model=model, **settings)
    load_seconds = time.time() - t0
    topk_ready = False

    def generate(prompts: list[list[int]], temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1,
                 max_tokens: int = 64, seed: int | None = None, stop: list[str] | None = None, n: int = 1) -> list:
        # vLLM refuses n > 1 with greedy sampling; greedy samples are identical by definition,
        # so one is generated and repeated (diversity at temperature 0 is then exactly 0).
        draws = 1 if temperature == 0 else n
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                seed=seed, stop=stop or None, n=draws)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        results = []
        for o in outs:
            samples = [{"text": c.text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason}
                       for c in o.outputs]
            results.append(samples * n if draws == 1 else samples)
        return results

    def logprobs(sequences: list[list[int]], top_k: int = 20) -> list:
        """For each sequence, per position i>=1: {"token": logprob of ids[i], "top": [[id, logprob], ...]}."""
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k)
        results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in sequences], params, use_tqdm=False)
        out_all = []
        for ids, result in zip(sequences, results):
            rows = []
            for pos, entry in enumerate(result.prompt_logprobs):
                if pos == 0 or entry is None:
                    continue
                top = sorted(((tid, lp.logprob) for tid, lp in entry.items()), key=lambda x: -x[1])[:top_k]
                rows.append({"token": entry[ids[pos]].logprob, "top": top})
            out_all.append(rows)
        return out_all

    def topk_logprobs(sequences: list[list[int]], score_from: int, top_k: int,
                      ref_ids: list[dict] | None = None) -> list[dict]:
        """Exact full-vocabulary log-probs of K ids per scored position, from this engine's own forward pass.

        Sequence s (length L) is scored at the positions predicting s[score_from:] (n = L - score_from
        rows). Per sequence, arrays encoded with quantkit.workers.arrays: "ids" int32 [n, K] (own top-K
        by descending log-prob, or exactly ref_ids[i]), "logprobs" float32 [n, K], "tail_logprob"
        float64 [n] (log of the mass outside those ids), "argmax" int32 [n], "token_logprob" float64 [n].

        How and why (hook in vLLM's logits pass of the same engine), and the measured cost, in
        quantkit/engines/vllm/topk.py and below.
        """
        nonlocal topk_ready
        if ref_ids is not None and len(ref_ids) != len(sequences):
            raise ValueError(f"ref_ids has {len(ref_ids)} entries for {len(sequences)} sequences")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        for i, ids in enumerate(sequences):
            if not 1 <= score_from < len(ids):
                raise ValueError(f"sequence {i}: score_from {score_from} outside 1..{len(ids) - 1} "
                                 f"for its {len(ids)} tokens")
        if not topk_ready:
            llm.collective_rpc("quantkit_topk_install")
            topk_ready = True
        job = uuid.uuid4().hex
        tags = [f"{job}-{i}" for i in range(len(sequences))]
        params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, skip_reading_prefix_cache=True,
                                 extra_args={TOPK_KEY: {"tag": tag, "score_from": score_from, "top_k": top_k,
                                                        "ref_ids": None if ref_ids is None else ref_ids[i]}})
                  for i, tag in enumerate(tags)]
        try:
            llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in sequences], params, use_tqdm=False)
        finally:  # collect even after a failure, so that no result stays behind in the engine
            found: dict[str, dict] = {}
            for part in llm.collective_rpc("quantkit_topk_collect", args=(tags,)):
                for tag, value in part.items():
                    found.setdefault(tag, value)
        results = []
        for i, tag in enumerate(tags):
            if tag not in found:
                raise RuntimeError(f"sequence {i}: the engine computed no scored rows for it")
            if "error" in found[tag]:
                raise ValueError(f"sequence {i}: {found[tag]['error']}")
            results.append(found[tag])
        return results

    def bench(prompts: list[list[int]], max_tokens: int, repeats: int = 3) -> dict:
        """Offline throughput: the whole batch at once, a fixed number of output tokens (EOS ignored)."""
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True)
        llm.generate([TokensPrompt(prompt_token_ids=prompts[0])], params, use_tqdm=False)  # warm-up
        runs = []
        for _ in range(repeats):
            llm.reset_prefix_cache()  # repeats send the same prompts: no prefix-cache hits
            t = time.perf_counter()
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            runs.append({"seconds": time.perf_counter() - t,
                         "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs)})
        return {"runs": runs}

    def memory() -> dict:
        import psutil

        me = psutil.Process()
        procs = [p for p in (me, *me.children(recursive=True)) if p.is_running()]
        return {"rss_bytes": sum(p.memory_info().rss for p in procs),
                "peak_rss_bytes": sum(peak_rss(p.pid) for p in procs),
                "pids": [p.pid for p in procs]}

    def info() -> dict:
        import vllm

        out = {"engine": "vllm", "version": vllm.__version__, "model": model, "load_seconds": load_seconds,
               "pid": os.getpid()}
        if topk_ready:  # cumulative cost of topk_logprobs' hook (lm_head on scored rows + reduction)
            out["topk_hook"] = next((s for s in llm.collective_rpc("quantkit_topk_stats") if s), {})
        return out

    serve({"generate": generate, "logprobs": logprobs, "topk_logprobs": topk_logprobs, "bench": bench, "memory": memory, "info": info}, out)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
