"""Where the tasks group's time goes, per engine (a benchmark that prints figures, not a timed test).

    .venv/bin/python -m quantkit.benchmarks.task_time [VARIANT] [--limit 20] [--tasks arc_easy gsm8k]
        [--json out.json] [--baseline before.json]

Starts the variant's engine worker (the reference runs on vLLM, a GGUF on llama.cpp), then runs
the tasks exactly as `compare`'s tasks group does (quantkit.evaluation.tasks.run_tasks over a
WorkerScorer) and splits its wall time into:
- rendering: the reference tokenizer turning lm-eval's request texts into ids (quantkit.prompts,
  cached on disk: a second run reads the cache, which the output says);
- loglikelihood: the engine scoring the multiple-choice continuations (`logprobs`);
- generation: the engine generating greedily until the task's stop strings (`generate`), with the
  tokens it made and how many generations ended on a stop string / EOS or on the token budget;
- scoring and lm-eval: the rest (lm-eval building the requests and few-shot prompts, filters,
  metrics).
Engine start is timed apart (the group does not pay it). `--json` writes the figures with the
generated texts and log-likelihoods; `--baseline` prints a run saved that way beside this one and
checks that the answers are the same (greedy results must not change with the engine's loop).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import psutil

from quantkit import loader, paths, sources
from quantkit.evaluation.scorer import WorkerScorer
from quantkit.evaluation.tasks import lm_eval_version, run_tasks
from quantkit.execution import worker_client
from quantkit.execution.local import LocalExecutor

PARTS = (("rendering", "tokenize"), ("loglikelihood", "loglikelihood"), ("generation", "generate"))


class RecordingScorer(WorkerScorer):
    """A WorkerScorer that keeps its answers, for the before/after comparison, and the CPU seconds
    the engine's processes spent in each operation (steadier than wall time on shared cores)."""

    def __init__(self, worker, tokenizer_dir, engine_pid: int):
        super().__init__(worker, tokenizer_dir)
        self.generations: list[str] = []
        self.loglikelihoods: list[tuple[float, bool]] = []
        self.engine_cpu: dict[str, float] = {}
        self._root = psutil.Process(engine_pid)

    def _cpu(self) -> float:
        total = 0.0
        for p in (self._root, *self._root.children(recursive=True)):
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    def _timed(self, op, fn, *args):
        c0 = self._cpu()
        out = fn(*args)
        self.engine_cpu[op] = self.engine_cpu.get(op, 0.0) + self._cpu() - c0
        return out

    def loglikelihood(self, pairs):
        out = self._timed("loglikelihood", super().loglikelihood, pairs)
        self.loglikelihoods += out
        return out

    def generate(self, prompts_ids, until, max_tokens):
        out = self._timed("generate", super().generate, prompts_ids, until, max_tokens)
        self.generations += out
        return out


def _prompt_cache_files() -> int:
    d = paths.cache_dir() / "prompts"
    return len(list(d.glob("*.json"))) if d.is_dir() else 0


@contextlib.contextmanager
def _worker_code(root: Path | None):
    """Engine workers started inside run quantkit's worker modules from `root` (a copy of another
    commit's quantkit package: `git archive <commit> quantkit | tar -x -C DIR`), or from this checkout."""
    if root is None:
        yield
        return
    original = worker_client.runtime_env

    def env_from_root(name: str) -> dict[str, str]:
        return {**original(name), "PYTHONPATH": str(root)}

    worker_client.runtime_env = env_from_root
    try:
        yield
    finally:
        worker_client.runtime_env = original


def measure(variant: str, tasks: list[str], limit: int, engine: str | None = None,
            worker_root: Path | None = None) -> dict:
    target = loader.load(variant, engine=engine)
    t0 = time.perf_counter()
    with _worker_code(worker_root):
        worker = LocalExecutor().start(target, label="task-time")
    try:
        info = worker.call("info", timeout=3600)
        start_s = time.perf_counter() - t0
        scorer = RecordingScorer(worker, Path(sources.resolve("default").location), info["pid"])
        cached_before, load_before = _prompt_cache_files(), psutil.getloadavg()
        t1 = time.perf_counter()
        rows = run_tasks(scorer, tasks, limit=limit)
        total = time.perf_counter() - t1
        load_after = psutil.getloadavg()
    finally:
        worker.close()
    parts = {name: float(scorer.stats.get(op, {}).get("seconds", 0.0)) for name, op in PARTS}
    parts["scoring_and_lm_eval"] = total - sum(parts.values())
    settings = target.worker_settings()
    return {
        "variant": variant, "worker_code": str(worker_root or paths.REPO_ROOT),
        "engine": f"{info['engine']} {info['version']}", "tasks": tasks, "limit": limit,
        "group_seconds": total, "parts_seconds": parts, "engine_start_seconds": start_s,
        "stats": {op: dict(s) for op, s in scorer.stats.items()}, "engine_cpu_seconds": scorer.engine_cpu,
        "metrics": {f"{r['task']}:{r['metric']}": r["value"] for r in rows},
        "conditions": {
            "load_avg_before": load_before, "load_avg_after": load_after, "cpu_count": os.cpu_count(),
            "threads": settings.get("n_threads", os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "engine default")),
            "settings": {k: v for k, v in settings.items() if k != "model"}, "lm_eval": lm_eval_version(),
            "rendered_from_cache": _prompt_cache_files() == cached_before, "machine": platform.processor() or platform.machine(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
        "generations": scorer.generations, "loglikelihoods": scorer.loglikelihoods,
    }


def _fmt_parts(res: dict) -> list[str]:
    g = res["stats"].get("generate", {})
    lines = [f"  group {res['group_seconds']:8.1f} s   (engine start {res['engine_start_seconds']:.1f} s, apart)"]
    cpu = res.get("engine_cpu_seconds", {})
    for name, sec in res["parts_seconds"].items():
        op = dict(PARTS).get(name)
        lines.append(f"  {name:20s} {sec:8.1f} s" + (f"   (engine CPU {cpu[op]:.1f} s)" if op in cpu else ""))
    if g:
        lines.append(f"  generated {g.get('output_tokens', 0)} tokens for {g.get('requests', 0)} prompts "
                     f"({g.get('prompt_tokens', 0)} prompt tokens) in {g.get('calls', 0)} call(s); ended on stop/EOS "
                     f"{g.get('finish_stop', 0)}, on the token budget {g.get('finish_length', 0)}")
    ll = res["stats"].get("loglikelihood", {})
    if ll:
        lines.append(f"  scored {ll.get('requests', 0)} continuations ({ll.get('tokens', 0)} tokens) in {ll.get('calls', 0)} call(s)")
    c = res["conditions"]
    lines.append(f"  conditions: {res['engine']}, threads {c['threads']}, {c['cpu_count']} CPUs, load avg "
                 f"{c['load_avg_before'][0]:.2f} -> {c['load_avg_after'][0]:.2f} (1 min), lm-eval {c['lm_eval']}, "
                 f"rendering {'from the cache' if c['rendered_from_cache'] else 'computed'}, {c['when']}")
    return lines


def compare_runs(before: dict, after: dict) -> list[str]:
    lines = [f"before/after ({before['variant']}, {before['engine']} -> {after['engine']}):"]
    for name in ["group", *after["parts_seconds"]]:
        b = before["group_seconds"] if name == "group" else before["parts_seconds"].get(name, 0.0)
        a = after["group_seconds"] if name == "group" else after["parts_seconds"][name]
        ratio = f"  ({b / a:.1f}x)" if min(a, b) >= 0.05 else ""  # no ratio of two noughts
        lines.append(f"  {name:20s} {b:8.1f} s -> {a:8.1f} s{ratio}")
    same_text = sum(x == y for x, y in zip(before["generations"], after["generations"]))
    lines.append(f"  same generated text: {same_text}/{len(after['generations'])}")
    lls = list(zip(before["loglikelihoods"], after["loglikelihoods"]))
    if lls:
        worst = max(abs(x[0] - y[0]) for x, y in lls)
        lines.append(f"  log-likelihoods: largest difference {worst:.2e}, same greedy flags "
                     f"{sum(x[1] == y[1] for x, y in lls)}/{len(lls)}")
    diff = {k: (before["metrics"].get(k), v) for k, v in after["metrics"].items() if before["metrics"].get(k) != v}
    lines.append(f"  metrics {'identical' if not diff else f'differ: {diff}'}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant", nargs="?", default="smollm2-gguf-q8_0")
    ap.add_argument("--engine", default=None, help="default: the variant's own (GGUF: llamacpp, else vllm)")
    ap.add_argument("--tasks", nargs="+", default=["arc_easy", "gsm8k"])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="write the figures (and the answers) here")
    ap.add_argument("--baseline", type=Path, default=None, help="a --json of an earlier run, printed beside this one")
    ap.add_argument("--before-code", type=Path, default=None,
                    help="first run the tasks with the engine worker of another commit, from a copy of its quantkit "
                         "package (git archive <commit> quantkit | tar -x -C DIR; pass DIR), then with this "
                         "checkout's, one after the other under the same conditions, and print both")
    args = ap.parse_args(argv)
    if args.before_code is not None:
        if not (args.before_code / "quantkit" / "workers" / "protocol.py").is_file():
            raise SystemExit(f"{args.before_code} holds no quantkit package (git archive <commit> quantkit | tar -x -C DIR)")
        before = measure(args.variant, args.tasks, args.limit, args.engine, worker_root=args.before_code)
        if args.json:
            args.json.with_suffix(".before.json").write_text(json.dumps(before, indent=1))
    res = measure(args.variant, args.tasks, args.limit, args.engine)
    print(f"tasks group: {args.variant}, {' + '.join(args.tasks)}, --limit {args.limit}")
    print("\n".join(_fmt_parts(res)))
    print("  metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in res["metrics"].items()))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.baseline or args.before_code is not None:
        if args.baseline:
            before = json.loads(args.baseline.read_text())
        print("before:")
        print("\n".join(_fmt_parts(before)))
        print("\n".join(compare_runs(before, res)))
    return res


if __name__ == "__main__":
    main()
