"""Online serving benchmark against an engine's own OpenAI server: a concurrency sweep.

Hand-written (the engines' own clients - vLLM's `bench serve`, llama.cpp's server bench - each
live in one engine's environment and report differently); it is small: streamed completions,
timestamps per network read, tokens counted per streamed event, and percentiles. Requests take
their prompts (token ids, all of one length) in turn from a pool of distinct prompts, so that
prefix caching cannot turn repeated prompts into cache hits; each asks for a fixed number of
output tokens (EOS ignored), greedy. `python -m quantkit.evaluation.crosscheck` compares these
figures with `vllm bench serve`.

How inter-token latency (ITL) is measured, and why:
- One streamed event (SSE `data:` message) can carry several tokens: vLLM's API server merges the
  outputs its engine produced while the server was busy, and llama-server holds back tokens that
  end inside a UTF-8 character or a possible stop string. Counting events as tokens makes a
  chunk of k tokens look like one slow token followed by nothing.
- Several events can arrive in one network read: on a fast model, or when the client is not
  scheduled for a moment (2 cores shared with the server), the socket holds many events when the
  client reads it. Their true arrival times lie somewhere since the previous read; stamping each
  event as it is parsed gives microsecond "latencies" (the 0.03 ms median ITL seen on a
  4-layer model).
- So the clock is read once per network read (aiohttp's `iter_any`, which returns whatever
  arrived), the tokens of every event completed by that read are counted, and the time since the
  previous read is divided evenly over them: a read with k tokens after a gap g adds k ITLs of
  g / k. The sum of the ITLs is then exactly the time from the first to the last token, and the
  distribution does not depend on how the bytes were packed.
- Tokens per event are counted exactly, from what the server itself reports with each event:
  vLLM's `stream_options.continuous_usage_stats` (cumulative `usage.completion_tokens` in every
  chunk) and llama-server's `timings_per_token` (cumulative `timings.predicted_n`). Both cost
  the server a few bytes of JSON per event. A server reporting neither is assumed to send one
  token per text event; that assumption is checked against the final `usage` when the server
  sends one, and a mismatch fails the measurement.
- The first token's read gives TTFT; tokens that arrive with the first token have no
  observable latency of their own and add no ITL. TPOT per request is (last token time - first
  token time) / (tokens - 1), as `vllm bench serve` defines it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from quantkit.evaluation.stats import median_spread

# Asks both servers for a cumulative token count in every streamed event (see the module docstring);
# each server ignores the other's field.
COUNT_FIELDS = {"stream_options": {"include_usage": True, "continuous_usage_stats": True},
                "timings_per_token": True}


class SSEBuffer:
    """Server-sent events from a byte stream fed in arbitrary pieces: `feed` returns the `data`
    payloads of the events that the new bytes complete. Hand-written: the SSE libraries for httpx
    and aiohttp iterate events and hide which network read delivered each one, which is what the
    timing needs."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []

    def feed(self, raw: bytes) -> list[str]:
        self._pending += raw
        *lines, self._pending = self._pending.split(b"\n")
        done: list[str] = []
        for line in lines:
            line = line.removesuffix(b"\r")
            if not line:  # a blank line ends an event
                if self._data:
                    done.append(b"\n".join(self._data).decode("utf-8"))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
            # comments (": ping"), event:, id:, retry: carry no tokens
        return done


def _cumulative_tokens(chunk: dict) -> int | None:
    """Completion tokens so far, as the server reports them with this event, if it does."""
    usage = chunk.get("usage")
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        return int(usage["completion_tokens"])
    timings = chunk.get("timings")
    if isinstance(timings, dict) and timings.get("predicted_n") is not None:
        return int(timings["predicted_n"])
    return None


@dataclass
class StreamTiming:
    """One streamed request: when each network read came, and the tokens it completed - as the
    server counted them, and as text events."""

    start: float
    reads: list[tuple[float, int, int]] = field(default_factory=list)  # (clock, counted tokens, text events)
    events: int = 0  # events that carried text
    server_counts: bool = False  # did any event carry a cumulative token count?
    reported_total: int | None = None  # the final usage, when the server sends one

    @property
    def arrivals(self) -> list[tuple[float, int]]:
        """(clock at the read, tokens it completed), for the reads that completed any."""
        if self.server_counts:
            return [(t, counted) for t, counted, _ in self.reads if counted]
        return [(t, texts) for t, _, texts in self.reads if texts]

    @property
    def counted_by(self) -> str:
        return "server" if self.server_counts else "events"

    def summary(self) -> dict:
        arrivals = self.arrivals
        if not arrivals:
            raise RuntimeError("the server streamed no tokens")
        n = sum(k for _, k in arrivals)
        if not self.server_counts and self.reported_total is not None and self.reported_total != n:
            raise RuntimeError(f"the server reports no token counts per streamed event, and its {self.reported_total} "
                               f"tokens came in {n} text events: inter-token latency cannot be measured")
        first, last = arrivals[0][0], arrivals[-1][0]
        itl = [(b - a) / k for (a, _), (b, k) in itertools.pairwise(arrivals) for _ in range(k)]
        return {"ttft": first - self.start, "itl": itl, "tokens": n, "reads": len(arrivals),
                "events": self.events, "latency": last - self.start,
                "tpot": (last - first) / (n - 1) if n > 1 else None, "counted_by": self.counted_by}


async def read_stream(pieces: AsyncIterator[bytes], start: float,
                      clock: Callable[[], float] = time.perf_counter) -> StreamTiming:
    """Time a streamed completion: `pieces` yields the body as it arrives, one item per network read."""
    timing = StreamTiming(start)
    sse = SSEBuffer()
    seen = 0
    async for raw in pieces:
        now = clock()
        counted, texts, finished = 0, 0, False
        for data in sse.feed(raw):
            if data.strip() == "[DONE]":
                finished = True
                break
            chunk = json.loads(data)
            choices = chunk.get("choices") or []
            if not choices:  # the final usage summary (include_usage): a total, no token
                timing.reported_total = _cumulative_tokens(chunk)
                continue
            count = _cumulative_tokens(chunk)
            if count is not None:
                timing.server_counts = True
                counted += max(count - seen, 0)
                seen = max(seen, count)
            if choices[0].get("text"):
                texts += 1
                timing.events += 1
        if counted or texts:
            timing.reads.append((now, counted, texts))
        if finished:
            break
    return timing


async def _one(session, url: str, model: str, prompt: list[int], max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": True, **COUNT_FIELDS}
    t0 = time.perf_counter()
    async with session.post(f"{url}/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"the server answered {response.status}: {(await response.text())[:300]}")
        timing = await read_stream(response.content.iter_any(), t0)
    return timing.summary()


async def _level(url: str | list[str], model: str, prompts: list[list[int]], concurrency: int,
                 max_tokens: int) -> dict:
    """Send `prompts` with at most `concurrency` in flight; with several server URLs (replicas),
    request i goes to URL i mod n (the client-side round-robin of the replica sweep)."""
    urls = [url] if isinstance(url, str) else list(url)
    # aiohttp, as `vllm bench serve`: its `iter_any` hands over each network read whole (httpx
    # splits a read into its HTTP chunks and hides where one read ended).
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    # force_close: a new connection per request. llama-server closes idle keep-alive connections on
    # its own schedule, and a reused one then fails as ServerDisconnectedError mid-sweep.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async def guarded(i, p):
            async with sem:
                return await _one(session, urls[i % len(urls)], model, p, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(guarded(i, p) for i, p in enumerate(prompts)))
        wall = time.perf_counter() - t0
    return {"wall": wall, "results": results}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def requests_needed(levels: list[int], repeats: int) -> int:
    """Prompts a sweep sends in all: 2 x concurrency requests (at least 4) per level and repeat,
    and the warm-up's."""
    return sum(max(2 * c, 4) for c in levels) * repeats + 1


def sweep(url: str | list[str], model: str, prompts: list[list[int]], levels: list[int], max_tokens: int,
          repeats: int) -> list[dict]:
    """Per concurrency level: TTFT, ITL (per token, see the module docstring) and TPOT median/p90
    over all requests of all repeats; output tokens/s (tokens the server reported) and requests/s
    as median of the repeats with their min-max spread; how the bytes came (events and network
    reads per token) so that a reader can see when the stream was coalesced.

    Prompts are taken in turn from `prompts`; pass `requests_needed(...)` of them so that no
    prompt is sent twice (fewer are cycled). Several URLs: the replicas of one model, requests
    spread round-robin over them (each warmed up first)."""
    urls = [url] if isinstance(url, str) else list(url)
    for u in urls:  # each server warmed up with the same first prompt: the measured requests are the same for any layout
        asyncio.run(_level(u, model, prompts[:1], 1, 4))
    measured = prompts[1:] or prompts
    pool = iter(measured * (requests_needed(levels, repeats) // len(measured) + 1))
    out = []
    for c in levels:
        n_requests = max(2 * c, 4)
        ttft, itl, tpot, tps, rps, reads, events, tokens, counted = [], [], [], [], [], 0, 0, 0, set()
        for _ in range(repeats):
            run = asyncio.run(_level(urls, model, [next(pool) for _ in range(n_requests)], c, max_tokens))
            results = run["results"]
            ttft += [r["ttft"] for r in results]
            itl += [x for r in results for x in r["itl"]]
            tpot += [r["tpot"] for r in results if r["tpot"] is not None]
            n_tokens = sum(r["tokens"] for r in results)
            tps.append(n_tokens / run["wall"])
            rps.append(n_requests / run["wall"])
            reads += sum(r["reads"] for r in results)
            events += sum(r["events"] for r in results)
            tokens += n_tokens
            counted |= {r["counted_by"] for r in results}
        if not itl:
            raise RuntimeError(f"no inter-token latency at concurrency {c}: every request's tokens came in one read")
        t_med, t_lo, t_hi, _ = median_spread(tps)
        r_med, r_lo, r_hi, _ = median_spread(rps)
        out.append({"concurrency": c, "requests": n_requests, "repeats": repeats,
                    "ttft_median_s": percentile(ttft, 50), "ttft_p90_s": percentile(ttft, 90),
                    "itl_median_s": percentile(itl, 50), "itl_p90_s": percentile(itl, 90),
                    "tpot_median_s": percentile(tpot, 50) if tpot else None,
                    "output_tokens_per_s": t_med, "output_tokens_per_s_spread": [t_lo, t_hi],
                    "requests_per_s": r_med, "requests_per_s_spread": [r_lo, r_hi],
                    "output_tokens": tokens, "tokens_per_read": tokens / reads, "tokens_per_event": tokens / events,
                    "tokens_counted_by": "+".join(sorted(counted))})
    return out
