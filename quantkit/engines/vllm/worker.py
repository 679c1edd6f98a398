"""vLLM engine worker: runs inside the `vllm` env, speaks quantkit.workers.protocol.

Usage: python -m quantkit.engines.vllm.worker '<json engine settings>'

One engine start per variant (issue 13). The worker runs vLLM's `AsyncLLM`, the engine client of
vLLM's own OpenAI server, built by vLLM's own `vllm serve` argument parser from the same flags
`quantkit serve` passes (engines.vllm.engine.server_command), so that the engine configuration is
the served one. The offline ops (generate, log-probs, exact top-K, bench) submit requests to it, and
op `serve_http` puts vLLM's own OpenAI app (`build_app` + `init_app_state`, served by uvicorn through
vLLM's `NoSignalServer`, as `vllm serve` does) in front of the same engine: compare's serving sweep
then talks HTTP to the engine whose kernels the fidelity and task figures came from, and vLLM is
initialised (and compiled) once per variant instead of twice. vLLM's launcher code is not called
whole (`run_server`) because it owns the process: signals, the socket's port and the end of the
process; the pieces it assembles are called here in the same order.

Threads: the main thread runs the event loop (uvloop, as `vllm serve`); the JSON-lines protocol
reads stdin in a daemon thread and runs each op's coroutine on that loop. Ctrl-C (SIGINT) and
SIGTERM end the loop's main task, which shuts the engine down (its shared memory unlinked).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from quantkit.workers.procinfo import peak_rss
from quantkit.workers.protocol import claim_stdout, serve


def server_args(settings: dict) -> Any:
    """vLLM's `vllm serve` arguments for these engine settings (its own parser: its defaults too);
    the served name, host and port are set when `serve_http` asks for a server."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from quantkit.engines.vllm.flags import cli_flags

    settings = dict(settings)
    model = settings.pop("model")
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", model, *cli_flags(settings)])
    validate_parsed_serve_args(args)
    return args


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt("terminated")


def main(settings: dict) -> None:
    out = claim_stdout()
    import signal

    import uvloop

    # SIGTERM (quantkit's supervisor stopping the tree) ends the worker as Ctrl-C does, through the
    # engine's own shutdown: vLLM's engine processes unlink their shared memory (/dev/shm) and
    # semaphores only then. Python's default for SIGTERM is to die on the spot, leaking both. vLLM's
    # `run_server` does the same during its start-up (`_interrupt_init`).
    signal.signal(signal.SIGTERM, _interrupt)
    uvloop.run(_main(settings, out))


async def _main(settings: dict, out) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client_from_engine_args

    # The mixin that lets `topk_logprobs` hook vLLM's own logits pass (see quantkit/engines/vllm/topk.py).
    settings.setdefault("worker_extension_cls", "quantkit.engines.vllm.topk.TopkWorkerExtension")
    model = settings["model"]
    args = server_args(settings)
    t0 = time.time()
    async with build_async_engine_client_from_engine_args(AsyncEngineArgs.from_cli_args(args)) as engine:
        load_seconds = time.time() - t0
        ops = _Ops(engine, args, asyncio.get_running_loop(), model, load_seconds)
        done = asyncio.get_running_loop().create_future()

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def protocol() -> None:
            try:
                serve(ops.handlers(), out)
            finally:
                ops.loop.call_soon_threadsafe(finish)

        threading.Thread(target=protocol, name="quantkit-protocol", daemon=True).start()
        try:
            await done
        finally:
            await ops.stop_http()


class _Ops:
    """The contract's ops over one AsyncLLM; each runs its coroutine on the engine's loop."""

    def __init__(self, engine: Any, args: Any, loop: asyncio.AbstractEventLoop, model: str, load_seconds: float):
        self.engine, self.args, self.loop, self.model, self.load_seconds = engine, args, loop, model, load_seconds
        self.topk_ready = False
        self.http: dict | None = None  # the OpenAI server in front of the engine, once asked for

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _final(self, prompt: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY
        final = None
        async for out in self.engine.generate(TokensPrompt(prompt_token_ids=prompt), params, uuid.uuid4().hex):
            final = out
        return final

    def submit(self, prompts: list[list[int]], params: Any) -> list:
        """All prompts at once (the engine batches them, as `LLM.generate` does); outputs in order."""
        import copy

        per_prompt = params if isinstance(params, list) else [copy.copy(params) for _ in prompts]

        async def everything():
            return await asyncio.gather(*(self._final(p, sp) for p, sp in zip(prompts, per_prompt)))

        return self.run(everything())

    def handlers(self) -> dict:
        return {"generate": self.generate, "logprobs": self.logprobs, "topk_logprobs": self.topk_logprobs,
                "bench": self.bench, "memory": self.memory, "info": self.info, "serve_http": self.serve_http}

    def generate(self, prompts: list[list[int]], temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1,
                 max_tokens: int = 64, seed: int | None = None, stop: list[str] | None = None, n: int = 1) -> list:
        from vllm import SamplingParams

        # vLLM refuses n > 1 with greedy sampling; greedy samples are identical by definition,
        # so one is generated and repeated (diversity at temperature 0 is then exactly 0).
        draws = 1 if temperature == 0 else n
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                seed=seed, stop=stop or None, n=draws)
        results = []
        for o in self.submit(prompts, params):
            samples = [{"text": c.text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason}
                       for c in o.outputs]
            results.append(samples * n if draws == 1 else samples)
        return results

    def logprobs(self, sequences: list[list[int]], top_k: int = 20) -> list:
        """For each sequence, per position i>=1: {"token": logprob of ids[i], "top": [[id, logprob], ...]}."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k)
        out_all = []
        for ids, result in zip(sequences, self.submit(sequences, params)):
            rows = []
            for pos, entry in enumerate(result.prompt_logprobs):
                if pos == 0 or entry is None:
                    continue
                top = sorted(((tid, lp.logprob) for tid, lp in entry.items()), key=lambda x: -x[1])[:top_k]
                rows.append({"token": entry[ids[pos]].logprob, "top": top})
            out_all.append(rows)
        return out_all

    def topk_logprobs(self, sequences: list[list[int]], score_from: int, top_k: int,
                      ref_ids: list[dict] | None = None) -> list[dict]:
        """Exact full-vocabulary log-probs of K ids per scored position, from this engine's own forward pass.

        Sequence s (length L) is scored at the positions predicting s[score_from:] (n = L - score_from
        rows). Per sequence, arrays encoded with quantkit.workers.arrays: "ids" int32 [n, K] (own top-K
        by descending log-prob, or exactly ref_ids[i]), "logprobs" float32 [n, K], "tail_logprob"
        float64 [n] (log of the mass outside those ids), "argmax" int32 [n], "token_logprob" float64 [n].

        How and why (hook in vLLM's logits pass of the same engine), and the measured cost, in
        quantkit/engines/vllm/topk.py.
        """
        from vllm import SamplingParams

        from quantkit.engines.vllm.topk import KEY as TOPK_KEY

        if ref_ids is not None and len(ref_ids) != len(sequences):
            raise ValueError(f"ref_ids has {len(ref_ids)} entries for {len(sequences)} sequences")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        for i, ids in enumerate(sequences):
            if not 1 <= score_from < len(ids):
                raise ValueError(f"sequence {i}: score_from {score_from} outside 1..{len(ids) - 1} "
                                 f"for its {len(ids)} tokens")
        if not self.topk_ready:
            self.run(self.engine.collective_rpc("quantkit_topk_install"))
            self.topk_ready = True
        job = uuid.uuid4().hex
        tags = [f"{job}-{i}" for i in range(len(sequences))]
        params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, skip_reading_prefix_cache=True,
                                 extra_args={TOPK_KEY: {"tag": tag, "score_from": score_from, "top_k": top_k,
                                                        "ref_ids": None if ref_ids is None else ref_ids[i]}})
                  for i, tag in enumerate(tags)]
        try:
            self.submit(sequences, params)
        finally:  # collect even after a failure, so that no result stays behind in the engine
            found: dict[str, dict] = {}
            for part in self.run(self.engine.collective_rpc("quantkit_topk_collect", args=(tags,))):
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

    def bench(self, prompts: list[list[int]], max_tokens: int, repeats: int = 3, pick: bool = True) -> dict:
        """Offline throughput: the whole batch at once, a fixed number of output tokens (EOS ignored)."""
        if not pick:
            raise ValueError("vLLM's engine always samples its tokens: bench(pick=False) is llama.cpp's")
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True)
        self.submit(prompts[:1], params)  # warm-up
        runs = []
        for _ in range(repeats):
            self.run(self.engine.reset_prefix_cache())  # repeats send the same prompts: no prefix-cache hits
            t = time.perf_counter()
            outs = self.submit(prompts, params)
            runs.append({"seconds": time.perf_counter() - t,
                         "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs)})
        return {"runs": runs}

    def memory(self) -> dict:
        import psutil

        me = psutil.Process()
        procs = [p for p in (me, *me.children(recursive=True)) if p.is_running()]
        return {"rss_bytes": sum(p.memory_info().rss for p in procs),
                "peak_rss_bytes": sum(peak_rss(p.pid) for p in procs),
                "pids": [p.pid for p in procs]}

    def info(self) -> dict:
        import vllm

        out = {"engine": "vllm", "version": vllm.__version__, "model": self.model, "load_seconds": self.load_seconds,
               "pid": os.getpid(), "engine_client": "AsyncLLM (vLLM's OpenAI server engine client)",
               "serving": self.http["url"] if self.http else None}
        if self.topk_ready:  # cumulative cost of topk_logprobs' hook (lm_head on scored rows + reduction)
            stats = self.run(self.engine.collective_rpc("quantkit_topk_stats"))
            out["topk_hook"] = next((s for s in stats if s), {})
        return out

    def serve_http(self, host: str = "127.0.0.1", served_name: str | None = None) -> dict:
        """vLLM's OpenAI server in front of this engine, on a free port of `host`; the same answer
        when asked again. {"url": "http://host:port/v1", "model": served name}."""
        if self.http is None:
            self.http = self.run(self._start_http(host, served_name or self.model))
        return {k: self.http[k] for k in ("url", "model")}

    async def _start_http(self, host: str, served_name: str) -> dict:
        import uvicorn
        import vllm.envs as envs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.launcher import NoSignalServer

        args = self.args
        args.served_model_name, args.host = [served_name], host
        # GET /tokenizer_info (vLLM's switch, off by default): lm-eval's remote tokenizer reads it
        # (evaluation/lmeval_crosscheck.py); a route more, nothing else changes in the app
        args.enable_tokenizer_info_endpoint = True
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        args.port = sock.getsockname()[1]
        supported = await self.engine.get_supported_tasks()
        app = build_app(args, supported, self.engine.model_config)
        await init_app_state(self.engine, app.state, args, supported)
        config = uvicorn.Config(app, host=host, port=args.port, log_level=args.uvicorn_log_level,
                                access_log=not args.disable_uvicorn_access_log,
                                timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE)
        server = NoSignalServer(config)
        app.state.server = server
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()  # raises the start-up failure
                raise RuntimeError("vLLM's OpenAI server stopped during start-up")
            await asyncio.sleep(0.05)
        return {"url": f"http://{host}:{args.port}/v1", "model": served_name, "server": server, "task": task,
                "socket": sock}

    async def stop_http(self) -> None:
        if self.http is None:
            return
        self.http["server"].should_exit = True
        try:
            await asyncio.wait_for(self.http["task"], 10)
        except Exception:  # noqa: BLE001 - the process is ending anyway
            pass
        self.http["socket"].close()
        self.http = None


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
