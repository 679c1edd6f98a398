"""The control for the llama.cpp speed cross-check: how close can *any* Python process calling the
same libllama get to `llama-bench`? (A benchmark that prints figures, not a timed test.)

    .venv/bin/python -m quantkit.benchmarks.llamacpp_bare_loop [VARIANT] [--pairs 7] [--threads N]

A twenty-line decode loop, hand-written because it is the point of the measurement: the binding's
low-level calls only, in llama-bench's own shape (one context of depth + output cells,
`llama_batch_get_one` of one token, `llama_synchronize`, no sampling, no quantkit code), with and
without a persistent ggml threadpool polling as llama-bench's (`--poll 50`). Interleaved with
`llama-bench -p 0 -n OUTPUT -d DEPTH` under the same flags as the cross-check, it prints the
per-pair ratios and their median. Where the control reads below 1, that part of the worker's
gap to llama-bench is the process (Python, ctypes), not quantkit's loop.

Measured 2026-11-24 (Q4_K_M, 2 threads, AVX2): 0.978 without the pool and 0.981 with it (7 pairs
each), where quantkit's worker (`crosscheck`, no pick) read 0.964-0.991.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# -- runs inside the llamacpp env (the binding is not in quantkit's venv) --------------------------
_LOOP = r'''
import ctypes, json, os, statistics, subprocess, sys, time
import llama_cpp as L
model, bench, threads, depth, n_gen, pairs = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
flags = json.loads(sys.argv[7])
libdir = os.environ["LLAMA_CPP_LIB_PATH"]
cpu = ctypes.CDLL(os.path.join(libdir, "libggml-cpu.so"))
base = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"))
llama = ctypes.CDLL(os.path.join(libdir, "libllama.so"))

class Params(ctypes.Structure):  # struct ggml_threadpool_params (ggml.h, GGML_MAX_N_THREADS 512)
    _fields_ = [("cpumask", ctypes.c_bool * 512), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]

base.ggml_threadpool_params_default.restype = Params
base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
cpu.ggml_threadpool_new.restype = ctypes.c_void_p
cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(Params)]
llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p] * 3
L.llama_backend_init()
m = L.llama_model_load_from_file(model.encode(), L.llama_model_default_params())
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(m))

def context():
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = depth + n_gen, flags["n_batch"], flags["n_batch"]
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = 1 if flags["flash_attn"] else 0
    return L.llama_init_from_model(m, cp)

plain, pooled = context(), context()
p = base.ggml_threadpool_params_default(threads)
p.poll = 50
pool = cpu.ggml_threadpool_new(ctypes.byref(p))
llama.llama_attach_threadpool(ctypes.cast(pooled, ctypes.c_void_p), pool, pool)

def run(ctx):
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    toks = (L.llama_token * depth)(*([100] * depth))
    L.llama_decode(ctx, L.llama_batch_get_one(toks, depth))
    tok = (L.llama_token * 1)(200)
    t = time.perf_counter()
    for _ in range(n_gen):
        L.llama_decode(ctx, L.llama_batch_get_one(tok, 1))
        L.llama_synchronize(ctx)
        tok[0] = (tok[0] * 7 + 13) % n_vocab  # any token: a decode costs the same
    return n_gen / (time.perf_counter() - t)

def llama_bench():
    out = subprocess.run([bench, "-m", model, "-r", "5", "-o", "json", *flags["argv"], "-p", "0", "-n", str(n_gen),
                          "-d", str(depth)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[-1]["avg_ts"]

run(plain), run(pooled)
rows = []
for i in range(pairs):
    tool = llama_bench()
    a = statistics.mean(run(plain) for _ in range(5))
    b = statistics.mean(run(pooled) for _ in range(5))
    rows.append((tool, a, b))
    print(f"  pair {i + 1}: llama-bench tg {tool:.1f}  bare loop {a:.1f} ({a / tool:.3f})  "
          f"with a polling threadpool {b:.1f} ({b / tool:.3f})", flush=True)
print(f"median ratio to llama-bench: bare loop {statistics.median(a / t for t, a, _ in rows):.3f}, "
      f"with the threadpool {statistics.median(b / t for t, _, b in rows):.3f} ({pairs} pairs)")
'''


def main(argv: list[str] | None = None) -> int:
    from quantkit import loader
    from quantkit.envs import llamacpp_build
    from quantkit.envs.manager import python_for, runtime_env
    from quantkit.evaluation.compare import CompareConfig, engine_settings
    from quantkit.evaluation.crosscheck import llama_bench_flags
    from quantkit.hardware import detect

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant", nargs="?", default="smollm2-gguf-q4_k_m")
    ap.add_argument("--input", type=int, default=64, help="context depth before the decodes (as the cross-check)")
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    threads = args.threads or detect().cpu_cores
    cfg = CompareConfig.make(quick=True)
    target = loader.load(args.variant, settings={**engine_settings(args.variant, cfg, None), "n_threads": threads})
    settings = target.settings.model_dump()
    if settings.get("n_gpu_layers"):
        print("this control runs the CPU path only (the model offloads layers to a GPU here)", file=sys.stderr)
        return 2
    flags = {"argv": llama_bench_flags(settings, threads), "n_batch": settings.get("n_batch", 512),
             "flash_attn": bool(settings.get("flash_attn"))}
    print(f"{args.variant}: depth {args.input}, {args.output} decodes, {threads} threads, {detect().describe()}")
    return subprocess.run([str(python_for("llamacpp")), "-c", _LOOP, str(target.model_path),
                           str(llamacpp_build.tool("llama-bench")), str(threads), str(args.input), str(args.output),
                           str(args.pairs), json.dumps(flags)], env=runtime_env("llamacpp"),
                          stderr=subprocess.DEVNULL if not os.environ.get("QUANTKIT_DEBUG") else None).returncode


if __name__ == "__main__":
    raise SystemExit(main())
