"""Serving sweep timing: tokens counted per streamed event, time taken per network read."""

import asyncio
import json

import pytest

from quantkit.evaluation import serving
from quantkit.evaluation.serving import SSEBuffer, read_stream


def vllm_event(text: str, completion_tokens: int) -> bytes:
    """A vLLM completions chunk with continuous usage stats."""
    return b"data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}],
                                   "usage": {"prompt_tokens": 8, "completion_tokens": completion_tokens}}).encode() + b"\n\n"


def llama_event(text: str, predicted_n: int) -> bytes:
    """A llama-server completions chunk with timings_per_token."""
    return b"data: " + json.dumps({"choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}],
                                   "timings": {"predicted_n": predicted_n, "predicted_ms": 1.0}}).encode() + b"\r\n\r\n"


def plain_event(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "text": text}]}).encode() + b"\n\n"


class FakeNetwork:
    """Yields network reads; the clock advances by each read's delay before it arrives."""

    def __init__(self, reads: list[tuple[float, bytes]]):
        self.reads, self.t = reads, 100.0

    def clock(self) -> float:
        return self.t

    async def pieces(self):
        for delay, data in self.reads:
            self.t += delay
            yield data


def _time(reads):
    net = FakeNetwork(reads)
    timing = asyncio.run(read_stream(net.pieces(), start=100.0, clock=net.clock))
    return timing.summary()


def test_multi_token_chunks_and_a_read_holding_several_events_divide_their_latency():
    reads = [
        (0.050, vllm_event("A", 1)),                                          # first token: TTFT 50 ms
        (0.010, vllm_event("B", 2)),                                          # 1 token after 10 ms
        (0.030, vllm_event("CDE", 5)),                                        # one chunk of 3 tokens after 30 ms
        (0.040, vllm_event("F", 6) + vllm_event("G", 7) + vllm_event("HI", 9)),  # one read, 3 events, 4 tokens
        (0.001, b"data: [DONE]\n\n"),
    ]
    r = _time(reads)
    assert r["ttft"] == pytest.approx(0.050)
    assert r["tokens"] == 9 and r["events"] == 6 and r["reads"] == 4 and r["counted_by"] == "server"
    assert r["itl"] == pytest.approx([0.010] + [0.010] * 3 + [0.010] * 4)
    assert sum(r["itl"]) == pytest.approx(0.080)  # exactly first token -> last token
    assert r["tpot"] == pytest.approx(0.080 / 8)
    # stamping each event as it is parsed would have given 30 ms and two zero latencies for the
    # last read, and counting events as tokens would have lost three tokens
    assert min(r["itl"]) > 0


def test_events_split_across_reads_count_when_they_complete():
    ev = llama_event("x", 1) + llama_event("y", 2)
    end_first = ev.index(b"\r\n\r\n") + 4
    cut1, cut2 = end_first // 2, end_first + 5
    reads = [(0.020, ev[:cut1]), (0.005, ev[cut1:cut2]), (0.010, ev[cut2:]), (0.0, b"data: [DONE]\n\n")]
    r = _time(reads)
    # the first event is complete only in the second read (25 ms); the second in the third
    assert r["tokens"] == 2
    assert r["ttft"] == pytest.approx(0.025) and r["itl"] == pytest.approx([0.010])


def test_final_usage_chunk_adds_no_token_and_llama_server_counts_are_read():
    reads = [(0.02, llama_event("a", 1)), (0.01, llama_event("bc", 3)),
             (0.01, b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n\n: ping\n\ndata: [DONE]\n\n')]
    r = _time(reads)
    assert r["tokens"] == 3 and r["itl"] == pytest.approx([0.005, 0.005])


def test_a_server_without_counts_is_trusted_only_when_its_total_agrees():
    ok = [(0.02, plain_event("a")), (0.01, plain_event("b")),
          (0.0, b'data: {"choices": [], "usage": {"completion_tokens": 2}}\n\ndata: [DONE]\n\n')]
    r = _time(ok)
    assert r["counted_by"] == "events" and r["tokens"] == 2
    bad = [(0.02, plain_event("a")), (0.01, plain_event("bcd")),
           (0.0, b'data: {"choices": [], "usage": {"completion_tokens": 4}}\n\ndata: [DONE]\n\n')]
    with pytest.raises(RuntimeError, match="no token counts per streamed event"):
        _time(bad)


def test_sse_buffer_handles_crlf_comments_and_multiline_data():
    buf = SSEBuffer()
    assert buf.feed(b": keep-alive\r\n\r\ndata: {\"a\":") == []
    assert buf.feed(b" 1}\r\n\r\nevent: x\ndata: line1\ndata: line2\n") == ['{"a": 1}']
    assert buf.feed(b"\n") == ["line1\nline2"]


def test_sweep_against_a_real_http_server_with_coalesced_writes():
    """The whole client path (aiohttp, request body, per-read timing) against a local server that
    writes several events in one write and multi-token chunks, with real sleeps between writes."""
    from aiohttp import web

    gap = 0.03
    bodies = []

    async def completions(request):
        body = await request.json()
        bodies.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.01)
        await resp.write(vllm_event("t", 1))
        n = 1
        while n < body["max_tokens"]:
            await asyncio.sleep(gap)
            step = min(3 if n % 2 else 1, body["max_tokens"] - n)  # alternating 3-token and 1-token gaps
            # the 3-token step arrives as three events in one write
            await resp.write(b"".join(vllm_event("t", n + i + 1) for i in range(step)))
            n += step
        await resp.write(b'data: {"choices": [], "usage": {"completion_tokens": %d}}\n\ndata: [DONE]\n\n' % n)
        return resp

    async def run():
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(serving.sweep, f"http://127.0.0.1:{port}/v1", "m",
                                           [[1, 2, 3]] * 10, [1], 9, 1)
        finally:
            await runner.cleanup()

    [level] = asyncio.run(run())
    assert bodies[0]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert bodies[0]["timings_per_token"] is True and bodies[0]["ignore_eos"] is True
    assert level["tokens_counted_by"] == "server" and level["output_tokens"] == 4 * 9
    assert level["tokens_per_event"] == pytest.approx(1.0)
    assert level["tokens_per_read"] > 1.5  # the 3-token writes came as one read each
    # ITLs: gap/3 for the tokens of 3-token writes (6 of 8 decode tokens), gap for the others
    assert gap / 3 * 0.9 < level["itl_median_s"] < gap / 3 * 1.6, level
    assert gap / 2 * 0.9 < level["tpot_median_s"] < gap / 2 * 1.5, level  # 4 gaps over 8 tokens


def test_a_sweep_level_becomes_figures_with_their_sample_sizes():
    """level_figures (shared by the serving and replica sweeps): latencies in ms over every request
    of every repeat, throughputs over the repeats with half their spread as the uncertainty."""
    from types import SimpleNamespace

    from quantkit.evaluation.groups.serving import level_figures
    from quantkit.results.store import Figure

    run = SimpleNamespace(fig=lambda group, metric, value, unc=None, n=None, unit=None, *, conditions=None, params=None:
                          Figure("m", "e", group, metric, value, unc, n, unit, conditions=conditions or {},
                                 params=params or {}))
    lv = {"concurrency": 4, "requests": 8, "repeats": 2, "ttft_median_s": 0.25, "ttft_p90_s": 0.5,
          "itl_median_s": 0.05, "itl_p90_s": 0.07, "output_tokens_per_s": 70.0, "output_tokens_per_s_spread": [66.0, 74.0],
          "requests_per_s": 2.5}
    figs = {f.metric: f for f in level_figures(run, "serving", lv, {"c": 1}, {"concurrency": 4})}
    assert list(figs) == ["ttft_median_ms", "ttft_p90_ms", "itl_median_ms", "itl_p90_ms", "output_tokens_per_s",
                          "requests_per_s"]
    assert (figs["itl_median_ms"].value, figs["itl_median_ms"].n, figs["itl_median_ms"].unit) == (50.0, 16, "ms")
    assert (figs["output_tokens_per_s"].uncertainty, figs["output_tokens_per_s"].n) == (4.0, 2)
    assert all(f.params == {"concurrency": 4} and f.conditions == {"c": 1} for f in figs.values())
    some = level_figures(run, "scaling", lv, {}, {"layout": "2x1"}, ("output_tokens_per_s", "ttft_median_ms"))
    assert [(f.group, f.metric) for f in some] == [("scaling", "output_tokens_per_s"), ("scaling", "ttft_median_ms")]
