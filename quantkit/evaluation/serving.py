"""Online serving benchmark against an engine's own OpenAI server: a concurrency sweep.

Hand-written (the engines' own clients - vLLM's `bench serve`, llama.cpp's server bench - each
live in one engine's environment and report differently); it is small: streamed completions,
timestamps per token chunk, and percentiles. Requests take their prompts (token ids, all of one
length) in turn from a pool of distinct prompts, so that prefix caching cannot turn repeated
prompts into cache hits; each asks for a fixed number of output tokens (EOS ignored), greedy.
`python -m quantkit.evaluation.crosscheck` compares these figures with `vllm bench serve`.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from quantkit.evaluation.stats import median_spread


async def _one(client: httpx.AsyncClient, url: str, model: str, prompt: list[int], max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": True}
    t0 = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", f"{url}/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            choices = chunk.get("choices") or []
            if choices and choices[0].get("text"):
                stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError("the server streamed no tokens")
    return {"ttft": stamps[0] - t0, "itl": [b - a for a, b in zip(stamps, stamps[1:])],
            "chunks": len(stamps), "latency": stamps[-1] - t0}


async def _level(url: str, model: str, prompts: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        async def guarded(p):
            async with sem:
                return await _one(client, url, model, p, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(guarded(p) for p in prompts))
        wall = time.perf_counter() - t0
    return {"wall": wall, "results": results}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def requests_needed(levels: list[int], repeats: int) -> int:
    """Prompts a sweep sends in all: 2 x concurrency requests (at least 4) per level and repeat."""
    return sum(max(2 * c, 4) for c in levels) * repeats + 1


def sweep(url: str, model: str, prompts: list[list[int]], levels: list[int], max_tokens: int,
          repeats: int) -> list[dict]:
    """Per concurrency level: TTFT and ITL median/p90 over all requests of all repeats; output
    tokens/s and requests/s as median of the repeats with their min-max spread.

    Prompts are taken in turn from `prompts`; pass `requests_needed(...)` of them so that no
    prompt is sent twice (fewer are cycled)."""
    pool = iter(prompts * (requests_needed(levels, repeats) // len(prompts) + 1))
    asyncio.run(_level(url, model, [next(pool)], 1, 4))  # warm-up
    out = []
    for c in levels:
        n_requests = max(2 * c, 4)
        ttft, itl, tps, rps = [], [], [], []
        for _ in range(repeats):
            run = asyncio.run(_level(url, model, [next(pool) for _ in range(n_requests)], c, max_tokens))
            ttft += [r["ttft"] for r in run["results"]]
            itl += [x for r in run["results"] for x in r["itl"]]
            tps.append(n_requests * max_tokens / run["wall"])
            rps.append(n_requests / run["wall"])
        t_med, t_lo, t_hi, _ = median_spread(tps)
        r_med, r_lo, r_hi, _ = median_spread(rps)
        out.append({"concurrency": c, "requests": n_requests, "repeats": repeats,
                    "ttft_median_s": percentile(ttft, 50), "ttft_p90_s": percentile(ttft, 90),
                    "itl_median_s": percentile(itl, 50), "itl_p90_s": percentile(itl, 90),
                    "output_tokens_per_s": t_med, "output_tokens_per_s_spread": [t_lo, t_hi],
                    "requests_per_s": r_med, "requests_per_s_spread": [r_lo, r_hi]})
    return out
