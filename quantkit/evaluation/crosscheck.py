"""Do quantkit's speed figures agree with the engines' own benchmark tools on the same settings?

    python -m quantkit.evaluation.crosscheck VARIANT [--input 64] [--output 32] [--batch 4]

- GGUF variants: `llama-bench -p INPUT -n OUTPUT -r 3` (its tg figure: single-sequence decode
  tokens/s) against quantkit's single-stream decode rate (1 / median inter-token latency through
  `llama-server`) and quantkit's worker benchmark with one sequence.
- vLLM variants: `vllm bench throughput` (random prompts of the same lengths, same batch) output
  tokens/s against quantkit's offline benchmark (worker `bench`).
Prints both figures, their ratio and whether it is within the stated tolerance (15%, the
run-to-run spread seen on a shared 2-core machine). Exit code 1 when a ratio falls outside it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from quantkit import loader, prompts, sources
from quantkit.envs import llamacpp_build
from quantkit.envs.manager import python_for, runtime_env
from quantkit.evaluation.serving import sweep
from quantkit.evaluation.stats import median_spread
from quantkit.execution.local import LocalExecutor
from quantkit.hardware import detect
from quantkit.server import EngineServer

TOLERANCE = 0.15


def _prompt(n: int) -> list[int]:
    ref = Path(sources.resolve("default").location)
    [p] = prompts.render(ref, [prompts.plain("The history of the city begins " * 200)])
    return list(p.token_ids[:n])


def llama_bench(gguf: Path, n_in: int, n_out: int, threads: int) -> float:
    out = subprocess.run([str(llamacpp_build.tool("llama-bench")), "-m", str(gguf), "-p", str(n_in), "-n", str(n_out),
                          "-t", str(threads), "-r", "3", "-o", "json"], capture_output=True, text=True,
                         env=runtime_env("llamacpp"), check=True).stdout
    rows = json.loads(out)
    return next(r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)


def vllm_bench(model: Path, n_in: int, n_out: int, batch: int, settings: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "out.json"
        cmd = [str(python_for("vllm")), "-c", "from vllm.entrypoints.cli.main import main; main()", "bench",
               "throughput", "--model", str(model), "--dataset-name", "random", "--random-input-len", str(n_in),
               "--random-output-len", str(n_out), "--num-prompts", str(batch), "--output-json", str(result)]
        for k, v in settings.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=runtime_env("vllm"))
        found = re.findall(r"([\d.]+) output tokens/s", proc.stdout + proc.stderr)
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"vllm bench throughput failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
        return float(found[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant")
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args(argv)
    threads = detect().cpu_cores
    prompt = _prompt(args.input)
    rows = []
    if loader.locate(args.variant)[2] == "gguf":
        target = loader.load(args.variant, settings={"n_ctx": 1024, "n_threads": threads})
        theirs = llama_bench(target.model_path, args.input, args.output, threads)
        with LocalExecutor().start(target, label="crosscheck") as w:
            runs = w.call("bench", prompts=[prompt], max_tokens=args.output, repeats=3)["runs"]
        worker_rate = median_spread([r["output_tokens"] / r["seconds"] for r in runs])[0]
        with EngineServer(target) as server:
            [lv] = sweep(server.url, server.model_name, prompt, [1], args.output, 3)
        rows += [("llama-bench tg (decode tok/s)", theirs, "quantkit via llama-server: 1/ITL", 1 / lv["itl_median_s"], True),
                 # informational: includes the prompt's prefill, which tg excludes
                 ("llama-bench tg (decode tok/s)", theirs, "quantkit worker, 1 seq. (incl. prefill)", worker_rate, False)]
    else:
        settings = {"max_model_len": 1024}
        target = loader.load(args.variant, settings=settings)
        vsettings = {k: v for k, v in target.settings.model_dump(exclude_none=True).items()
                     if k in ("dtype", "gpu_memory_utilization", "max_model_len", "kv_cache_dtype", "enforce_eager")}
        theirs = vllm_bench(target.model_path, args.input, args.output, args.batch, vsettings)
        with LocalExecutor().start(target, label="crosscheck") as w:
            runs = w.call("bench", prompts=[prompt] * args.batch, max_tokens=args.output, repeats=3)["runs"]
        ours = median_spread([r["output_tokens"] / r["seconds"] for r in runs])[0]
        rows.append(("vllm bench throughput (output tok/s)", theirs, "quantkit offline bench", ours, True))
    ok = True
    print(f"{'engine tool':40} {'value':>9}   {'quantkit':45} {'value':>9}  ratio")
    for name, a, ours_name, b, checked in rows:
        ratio = b / a
        within = abs(ratio - 1) <= TOLERANCE
        ok &= within or not checked
        verdict = ("ok" if within else "OUTSIDE ±15%") if checked else "(not checked)"
        print(f"{name:40} {a:9.1f}   {ours_name:45} {b:9.1f}  {ratio:.2f} {verdict}")
    print(f"conditions: input {args.input} tokens, output {args.output}, batch {args.batch}, threads {threads}, "
          f"{detect().describe()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
