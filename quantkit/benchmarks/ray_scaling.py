"""Wall time of `compare --quick` over K variants: the local executor against the Ray executor (issue 10
item 4; a script, not a timed test).

    .venv/bin/python -m quantkit.benchmarks.ray_scaling [--variants A B ...] [--groups fidelity,probes]
                                                         [--repeats 3] [--two-nodes] [--threads N]

First a seed store is filled with the local executor: the reference and each engine's
full-precision baseline (what the variants are scored against) and one warm-up pass of the
variants. Each timed run then starts from a copy of that seed without the variants' figures, so it
measures the K variants again and nothing else; runs alternate local, Ray, local, Ray... (the
machine's load drifts), and the median of each is printed with its ratio to local. Ray's own start
(a local instance, or a two-node ray.cluster_utils.Cluster) is timed apart: it is paid once per
cluster, not per compare.

Targets (issue 10): Ray on one node adds at most 5% over the local executor; two nodes finish at
least 1.7x faster where the work splits evenly. On Ray, compare fans the variants out, one per node
with room. For the split to be even on one machine, give every worker a fixed thread count
(`--threads 1` on 2 cores): the local executor then runs the variants one after another on one
core each, and the two-node cluster (each node `cores / 2` CPUs) runs two at once.
"""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

DEFAULT_VARIANTS = ("smollm2-gguf-q8_0", "smollm2-gguf-q4_k_m")
DEFAULT_GROUPS = ("fidelity", "probes", "speed")


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


def _fresh_copy(seed: Path, dst: Path, variants: list[str]) -> Path:
    """`seed` without the figures of `variants` (the reference's and baselines' stay)."""
    dst.unlink(missing_ok=True)
    with sqlite3.connect(seed) as src, sqlite3.connect(dst) as out:
        src.backup(out)
        out.executemany("DELETE FROM figures WHERE variant=?", [(v,) for v in variants])
    return dst


def _timed(variants: list[str], cfg, store_path: Path, executor, settings: dict | None) -> float:
    from quantkit.evaluation.compare import compare
    from quantkit.results.store import Store

    t = time.perf_counter()
    compare(variants, cfg, store=Store(store_path), executor=executor, console=_quiet(), settings=settings)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    from quantkit.evaluation.compare import CompareConfig, compare
    from quantkit.execution.local import LocalExecutor
    from quantkit.execution.ray_executor import RayExecutor
    from quantkit.results.store import Store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    ap.add_argument("--groups", default=",".join(DEFAULT_GROUPS), help="comma-separated measurement groups")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--two-nodes", action="store_true", help="also Ray on a local two-node cluster")
    ap.add_argument("--threads", type=int, default=None,
                    help="n_threads of every variant's worker (default: the engine's; 1 makes two nodes split 2 cores)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("--seed", type=Path, default=None,
                    help="start the seed store from a copy of this one (e.g. results/quantkit.sqlite): a reference "
                         "already measured there under the same conditions is not measured again")
    args = ap.parse_args(argv)

    cfg = CompareConfig.make(True, groups=tuple(g for g in args.groups.split(",") if g))
    settings = {"llamacpp.n_threads": args.threads} if args.threads else None  # the GGUF variants' workers
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="quantkit-ray-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    seed = work / "seed.sqlite"
    if args.seed is not None:
        _fresh_copy(args.seed, seed, [])
    print(f"variants: {', '.join(args.variants)}; groups: {', '.join(cfg.groups)}; {args.repeats} repeats; "
          f"{os.cpu_count()} CPUs; worker threads {args.threads or 'engine default'}; stores in {work}")
    t = time.perf_counter()
    compare(args.variants, cfg, store=Store(seed), executor=LocalExecutor(), console=_quiet(), settings=settings)
    print(f"seed (reference, baselines, warm-up): {time.perf_counter() - t:.1f} s")

    modes: dict[str, list[float]] = {"local": [], "ray, 1 node": []}
    cluster = None
    t = time.perf_counter()
    ray_one = RayExecutor(init_kwargs={"num_cpus": os.cpu_count()})
    ray_one.connect()
    print(f"Ray start (local instance): {time.perf_counter() - t:.1f} s")
    try:
        for i in range(args.repeats):
            modes["local"].append(_timed(args.variants, cfg, _fresh_copy(seed, work / "run.sqlite", args.variants),
                                         LocalExecutor(), settings))
            modes["ray, 1 node"].append(_timed(args.variants, cfg,
                                               _fresh_copy(seed, work / "run.sqlite", args.variants), ray_one,
                                               settings))
            print(f"  run {i + 1}: " + ", ".join(f"{m} {v[-1]:.1f} s" for m, v in modes.items()))
        ray_one.close()
        if args.two_nodes:
            from ray.cluster_utils import Cluster

            t = time.perf_counter()
            cluster = Cluster(initialize_head=True, connect=False,
                              head_node_args={"num_cpus": 0, "include_dashboard": False})
            for _ in range(2):  # with fixed threads, each node has half the cores: two workers at once
                cluster.add_node(num_cpus=max(1, (os.cpu_count() or 2) // 2) if args.threads else os.cpu_count())
            cluster.wait_for_nodes()
            print(f"Ray start (two-node local cluster): {time.perf_counter() - t:.1f} s")
            modes["ray, 2 nodes"] = []
            with RayExecutor(cluster.address) as two:
                for _ in range(args.repeats):
                    modes["ray, 2 nodes"].append(
                        _timed(args.variants, cfg, _fresh_copy(seed, work / "run.sqlite", args.variants), two,
                               settings))
    finally:
        ray_one.close()
        if cluster is not None:
            cluster.shutdown()

    base = statistics.median(modes["local"])
    print(f"\ncompare --quick over {len(args.variants)} variants (median of {args.repeats}, wall s):")
    for mode, walls in modes.items():
        med = statistics.median(walls)
        print(f"  {mode:<14} {med:8.1f} s   x{med / base:.3f} of local   runs: {', '.join(f'{w:.1f}' for w in walls)}")
    one = statistics.median(modes["ray, 1 node"])
    print(f"Ray on one node: {100 * (one / base - 1):+.1f}% against local (target: at most +5%)")
    if "ray, 2 nodes" in modes:
        two_med = statistics.median(modes["ray, 2 nodes"])
        print(f"Ray on two nodes: {base / two_med:.2f}x as fast as local (target: at least 1.7x where the work "
              f"splits evenly{'' if args.threads else '; without --threads each worker takes every core'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
