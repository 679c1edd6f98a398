"""Does the Ray executor measure what the local executor measures? (issue 10: "`quantkit compare
--all --quick --executor ray` runs on a two-node local Ray cluster, and its leaderboard equals the
local executor's, speed aside").

    .venv/bin/python -m quantkit.benchmarks.ray_equivalence --local-db results/quantkit.sqlite
        [--ray-db PATH] [--address HOST:PORT] [--node-cpus N] [-- COMPARE ARGS...]

1. Unless `--skip-run` (or `--address` names a running cluster), starts a local Ray cluster
   (`ray.cluster_utils.Cluster`: a CPU-less head and `--nodes` nodes, default two, of
   `--node-cpus` CPUs each, default all of this machine's: the nodes share its cores). An
   existing `--ray-db` is resumed: compare measures only what it lacks.
2. Runs the very command a user runs, `quantkit compare ARGS --executor ray --address ADDR --db
   RAY_DB` (default ARGS: the demo's, `--all --quick --tasks arc_easy,gsm8k --limit 20`), so the
   CLI, the fan-out and its live table are what is exercised; its output passes through.
3. Compares the two stores figure by figure (`compare_stores`): every (model, engine, group,
   metric, parameters) the local store holds. Groups whose figures are deterministic functions of
   the same token ids, weights and seeds (fidelity, probes, tasks, the temperature sweep) must be
   identical: value, spread, sample size and status. Timed groups (speed, serving, memory, the
   replica sweep, stage times) are listed with the median ratio Ray / local and not judged: they
   depend on the machine's load, and on one machine the two nodes share its cores.

Exits 1 when a deterministic figure differs or is missing from the Ray store. Hand-written: no
library compares two quantkit stores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# groups whose figures must be equal between executors, and those that are timed (not judged)
EXACT_GROUPS = ("fidelity", "probes", "tasks", "sweep", "build")  # build: read from the manifests both runs share
DEFAULT_COMPARE_ARGS = ["compare", "--all", "--quick", "--tasks", "arc_easy,gsm8k", "--limit", "20"]

FigureKey = tuple[str, str, str, str, tuple]


@dataclass
class GroupComparison:
    """One group's figures from the two stores: how many compared, equal, differing, missing."""

    group: str
    exact: bool
    compared: int = 0
    equal: int = 0
    differ: list[str] = field(default_factory=list)  # "model metric params: local -> ray"
    missing: list[str] = field(default_factory=list)  # in the local store, not in the Ray store
    ratios: list[float] = field(default_factory=list)  # ray / local, timed groups

    @property
    def ok(self) -> bool:
        return not self.exact or (not self.differ and not self.missing)


def _key(f: Any) -> FigureKey:
    return (f.variant, f.engine, f.group, f.metric, tuple(sorted((k, str(v)) for k, v in f.params.items())))


def _shown(f: Any) -> str:
    if f.status != "ok":
        return f"{f.status}"
    if f.value is None:
        return repr(f.text)
    return f"{f.value!r}" + (f" ± {f.uncertainty!r}" if f.uncertainty is not None else "") + f" (n={f.n})"


def _same(a: Any, b: Any) -> bool:
    """Equal as measurements: status, value, spread, sample size, unit and text (a failure's reason
    names its node, and is not compared)."""
    return (a.status, a.value, a.uncertainty, a.n, a.unit, a.text if a.value is None else None) == \
           (b.status, b.value, b.uncertainty, b.n, b.unit, b.text if b.value is None else None)


def compare_stores(local: list[Any], ray: list[Any], exact_groups: tuple[str, ...] = EXACT_GROUPS,
                   only_models: set[str] | None = None) -> list[GroupComparison]:
    """Figures (results.store.Figure, the newest measurement of each group) of the local and the
    Ray store, compared per group; `only_models` limits both to those models."""
    mine = {_key(f): f for f in ray if only_models is None or f.variant in only_models}
    out: dict[str, GroupComparison] = {}
    for f in local:
        if only_models is not None and f.variant not in only_models:
            continue
        g = out.setdefault(f.group, GroupComparison(f.group, f.group in exact_groups))
        label = f"{f.variant} {f.metric}" + (f" {dict(_key(f)[4])}" if f.params else "")
        other = mine.get(_key(f))
        if other is None:
            g.missing.append(label)
            continue
        g.compared += 1
        if _same(f, other):
            g.equal += 1
        else:
            g.differ.append(f"{label}: {_shown(f)} -> {_shown(other)}")
        if not g.exact and f.status == other.status == "ok" and f.value and other.value is not None:
            g.ratios.append(other.value / f.value)
    return [out[k] for k in sorted(out, key=lambda k: (k not in exact_groups, k))]


def render(rows: list[GroupComparison], console: Console, show: int = 8) -> None:
    t = Table(title="local executor against Ray, figure by figure")
    for col in ("group", "judged", "figures", "equal", "differ", "missing from Ray", "Ray / local (median)"):
        t.add_column(col)
    for r in rows:
        ratio = f"{statistics.median(r.ratios):.3f} ({len(r.ratios)})" if r.ratios else ""
        t.add_row(r.group, "identical" if r.exact else "timed: shown", str(r.compared), str(r.equal),
                  str(len(r.differ)), str(len(r.missing)), ratio,
                  style=None if r.ok else "red")
    console.print(t)
    for r in rows:
        if r.exact and (r.differ or r.missing):
            for line in r.differ[:show]:
                console.print(f"  [red]{r.group} differs[/] {line}")
            for line in r.missing[:show]:
                console.print(f"  [red]{r.group} missing from Ray[/] {line}")
            more = len(r.differ) + len(r.missing) - 2 * show
            if more > 0:
                console.print(f"  ... and {more} more")


def main(argv: list[str] | None = None) -> int:
    from quantkit.results.store import Store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-db", type=Path, required=True, help="the local executor's store (e.g. the demo's)")
    ap.add_argument("--ray-db", type=Path, default=None, help="the Ray run's store (default: a new one in a temp dir)")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: a local two-node cluster)")
    ap.add_argument("--node-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--nodes", type=int, default=2,
                    help="nodes of the local cluster (1 runs the models one after another: on one small machine "
                         "two nodes share its cores, and two llama.cpp workers spinning on the same cores slow "
                         "each other many times over)")
    ap.add_argument("--skip-run", action="store_true", help="compare the stores only (--ray-db holds the Ray run)")
    ap.add_argument("--only-stored", action="store_true",
                    help="compare only the models the Ray store holds (a run cut short); the others are listed")
    ap.add_argument("compare_args", nargs="*", help="the compare command's arguments (after --)")
    args = ap.parse_args(argv)
    console = Console()
    if not args.local_db.exists():
        console.print(f"[red]error:[/] {args.local_db} does not exist (run the local compare first, e.g. `make demo`)")
        return 2
    ray_db = args.ray_db or Path(tempfile.mkdtemp(prefix="quantkit-ray-equivalence-")) / "ray.sqlite"
    compare_args = args.compare_args or DEFAULT_COMPARE_ARGS
    if compare_args[0] != "compare":
        compare_args = ["compare", *compare_args]

    if not args.skip_run:
        cluster = None
        address = args.address
        try:
            if address is None:
                from ray.cluster_utils import Cluster

                cluster = Cluster(initialize_head=True, connect=False,
                                  head_node_args={"num_cpus": 0, "include_dashboard": False})
                for _ in range(args.nodes):
                    cluster.add_node(num_cpus=args.node_cpus)
                cluster.wait_for_nodes()
                address = cluster.address
                console.print(f"local Ray cluster of {args.nodes} node(s) at {address} ({args.node_cpus} CPUs a node)")
            cmd = [sys.executable, "-m", "quantkit.cli", *compare_args, "--executor", "ray", "--address", address,
                   "--db", str(ray_db)]
            console.print("running: " + " ".join(cmd[2:]))
            code = subprocess.call(cmd)
            if code != 0:
                console.print(f"[yellow]the Ray compare exited {code}; comparing what it stored[/]")
        finally:
            if cluster is not None:
                cluster.shutdown()

    local_figs = [f for f in Store(args.local_db).figures() if f.group != "stages"]
    ray_figs = [f for f in Store(ray_db).figures() if f.group != "stages"]
    models, measured = {f.variant for f in ray_figs}, {f.group for f in ray_figs}
    left_out = sorted({f.group for f in local_figs} - measured)
    local_figs = [f for f in local_figs if f.group in measured]  # e.g. tasks, when the Ray run ran none
    console.print(f"local store {args.local_db}: {len(local_figs)} figures; Ray store {ray_db}: {len(ray_figs)} "
                  f"figures over {len(models)} models"
                  + (f"; groups the Ray run did not measure, left out: {', '.join(left_out)}" if left_out else ""))
    not_run = sorted({f.variant for f in local_figs} - models)
    if not_run:
        console.print(("[yellow]left out (--only-stored)[/]: " if args.only_stored else "[red]not in the Ray store[/]: ")
                      + ", ".join(not_run))
    rows = compare_stores(local_figs, ray_figs, only_models=models if args.only_stored else None)
    render(rows, console)
    bad = [r.group for r in rows if not r.ok]
    console.print("[red]deterministic figures differ: " + ", ".join(bad) + "[/]" if bad
                  else "[green]every deterministic figure is identical[/] (timed groups shown, not judged)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
