"""What the vLLM worker's `topk_logprobs` costs next to the raw forward pass, and whether it is exact.

A benchmark (not a timed test); runs in the core and drives one engine worker:

    .venv/bin/python -m quantkit.engines.vllm.topk_cost [VARIANT] [--per-call 8] [--reps 3]

Each repeat sends fresh fidelity windows (512 LAMBADA tokens, second half scored) to
`generate(max_tokens=1)` (the raw forward: logits of the last position only) and other fresh windows
to `topk_logprobs`, own top-K and then those ids given back, so that no call is helped by the
prefix cache. It prints wall seconds and the CPU seconds of the engine's processes (steadier than
wall time on shared cores), the hook's own share (see topk.py), and the exactness against vLLM's
own prompt log-probs on the same windows in the same order (the same engine steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import psutil

from quantkit import evaldata, loader, prompts, sources
from quantkit.evaluation import fidelity
from quantkit.execution.local import LocalExecutor
from quantkit.workers.arrays import decode


def _windows(length: int) -> list[list[int]]:
    ref = Path(sources.resolve("default").location)
    texts = evaldata.load_texts("lambada", limit=2000)
    [stream] = prompts.render(ref, [prompts.plain("\n\n".join(texts))])
    return fidelity.windows(list(stream.token_ids), length, 10_000)


def exactness(own: list[dict], theirs: list[list[dict]], sequences: list[list[int]], score_from: int) -> dict:
    """Ours minus vLLM's prompt log-probs per row: its spread over shared ids (0 if the logits are the
    same) and its offset (the normalisers' rounding); and our probability mass error."""
    spread, offset, mass = [], [], []
    for enc, rows, seq in zip(own, theirs, sequences):
        a = {k: decode(v) for k, v in enc.items()}
        mass.append(np.abs(np.exp(a["logprobs"].astype(np.float64)).sum(1) + np.exp(a["tail_logprob"]) - 1).max())
        for r, pos in enumerate(range(score_from, len(seq))):
            row = rows[pos - 1]
            mine = dict(zip(a["ids"][r].tolist(), a["logprobs"][r].tolist()))
            d = np.array([mine[int(t)] - v for t, v in row["top"] if int(t) in mine]
                         + [a["token_logprob"][r] - row["token"]])
            spread.append(d.max() - d.min())
            offset.append(abs(float(np.median(d))))
    return {"rows": len(spread), "spread_max": float(max(spread)), "offset_max": float(max(offset)),
            "mass_error_max": float(max(mass))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant", nargs="?", default="reference")
    ap.add_argument("--per-call", type=int, default=8, help="windows per call")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=128)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--kv-cache-dtype", default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    wins = _windows(args.window)
    need = args.per_call * (2 * args.reps + 2)
    if len(wins) < need:
        raise SystemExit(f"{len(wins)} windows of {args.window} tokens; {need} needed")
    fresh = (wins[i:i + args.per_call] for i in range(0, len(wins), args.per_call))
    sf = fidelity.score_from(args.window)
    settings: dict = {"max_model_len": args.window + 16}
    if args.gpu_memory_utilization:
        settings["gpu_memory_utilization"] = args.gpu_memory_utilization
    target = loader.load(args.variant, settings=settings, kv_cache_dtype=args.kv_cache_dtype)
    worker = LocalExecutor().start(target, label="topk-cost")
    try:
        info = worker.call("info", timeout=3600)
        print(f"{info['engine']} {info['version']} {args.variant}: {target.worker_settings()}", flush=True)
        tree = [psutil.Process(p) for p in worker.call("memory")["pids"]]

        def cpu() -> np.ndarray:
            return np.array([sum(p.cpu_times()[:2]) for p in tree])

        model_proc = [i for i, p in enumerate(tree) if "Worker" in p.name()] or [len(tree) - 1]

        def measured(op: str, **kw):
            """Wall s, CPU s of all engine processes, CPU s of the one running the model (vLLM's
            worker): the others wait for it partly by spinning, which counts as CPU time."""
            c0, t0 = cpu(), time.perf_counter()
            out = worker.call(op, **kw)
            c = cpu() - c0
            return out, time.perf_counter() - t0, float(c.sum()), float(c[model_proc].sum())

        warm = next(fresh)
        worker.call("topk_logprobs", sequences=warm[:1], score_from=sf, top_k=args.top_k)  # installs the hook
        worker.call("generate", prompts=warm[1:2], max_tokens=1)
        reps = []
        for _ in range(args.reps):
            raw_set, top_set = next(fresh), next(fresh)
            _, raw_w, raw_c, raw_m = measured("generate", prompts=raw_set, max_tokens=1)
            h0 = worker.call("info")["topk_hook"]
            own, own_w, own_c, own_m = measured("topk_logprobs", sequences=top_set, score_from=sf, top_k=args.top_k)
            h1 = worker.call("info")["topk_hook"]
            _, ref_w, ref_c, ref_m = measured("topk_logprobs", sequences=top_set, score_from=sf, top_k=args.top_k,
                                              ref_ids=[a["ids"] for a in own])
            rep = {"raw_wall_s": raw_w, "raw_cpu_s": raw_c, "raw_model_cpu_s": raw_m,
                   "own_wall_x": own_w / raw_w, "own_cpu_x": own_c / raw_c, "own_model_cpu_x": own_m / raw_m,
                   "given_wall_x": ref_w / raw_w, "given_cpu_x": ref_c / raw_c, "given_model_cpu_x": ref_m / raw_m,
                   "hook_lm_head_cpu_s": h1["logits_cpu_s"] - h0["logits_cpu_s"],
                   "hook_reduce_cpu_s": h1["reduce_cpu_s"] - h0["reduce_cpu_s"], "load_avg_1m": psutil.getloadavg()[0]}
            reps.append(rep)
            print("  " + "  ".join(f"{k} {v:.3g}" for k, v in rep.items()), flush=True)
        theirs = worker.call("logprobs", sequences=top_set, top_k=20)
        exact = exactness(own, theirs, top_set, sf)
    finally:
        worker.close()
    summary = {k: float(np.mean([r[k] for r in reps])) for k in reps[0]}
    out = {"variant": args.variant, "settings": target.worker_settings(), "engine": f"vllm {info['version']}",
           "windows_per_call": args.per_call, "window": args.window, "scored_rows_per_call": args.per_call * (args.window - sf),
           "top_k": args.top_k, "reps": reps, "mean": summary, "exactness_vs_vllm_prompt_logprobs": exact}
    print(f"mean over {args.reps} (target <= 1.3x): own top-K {summary['own_wall_x']:.2f}x wall, "
          f"{summary['own_cpu_x']:.2f}x engine CPU, {summary['own_model_cpu_x']:.2f}x model-process CPU; given ids "
          f"{summary['given_wall_x']:.2f}x, {summary['given_cpu_x']:.2f}x, {summary['given_model_cpu_x']:.2f}x")
    print(f"exactness over {exact['rows']} rows: spread {exact['spread_max']:.1e}, offset {exact['offset_max']:.1e}, "
          f"mass error {exact['mass_error_max']:.1e}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
