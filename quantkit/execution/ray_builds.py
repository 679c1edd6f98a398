"""`quantkit build --executor ray RECIPE...`: many recipes built at once, one Ray task each, on
whichever node has room.

Each recipe is read and checked on the driver first (a wrong recipe fails at once, naming the file
and the field, before anything is scheduled). Each build then runs `quantkit.builders.build` on
its node, exactly as `quantkit build` runs it locally: the engine envs of that node, the atomic
folder (a build that dies leaves nothing that looks valid) and reuse of an identical finished
build. The variants land in `models/variants/`, which the nodes share (the Ray executor's
shared-filesystem rule: mount the repository at the same path everywhere), so the driver's
compare finds them; the partial folders carry PID@host so that one node's sweep never removes
another node's build in progress (quantkit.atomic).

Resources of one build: a whole node's CPUs on a CPU cluster (llm-compressor's calibration and
llama.cpp's quantizer use every core they get, so two builds on one node would each run at half
speed and their build times would mean nothing), or one GPU where the cluster has GPUs and the
method calibrates on one (llm-compressor); `cpus_per_build` overrides the CPU share.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from quantkit.errors import QuantkitError
from quantkit.execution.ray_executor import RayExecutor, take_niceness

GPU_METHODS = {"gptq", "awq", "fp8", "int8"}  # llm-compressor builders: calibrate on a GPU when there is one


@dataclass
class BuildOutcome:
    recipe: str
    variant: str = ""
    node: str = ""
    seconds: float = 0.0
    reused: bool = False
    error: str = ""
    hint: str = ""


def _build_on_node(recipe_file: str, overrides: list[str], force: bool, nice: int | None = None) -> dict:
    """Runs on the node: the same build `quantkit build` runs, its console discarded (the driver
    reports the outcome), at the driver's niceness where allowed (take_niceness)."""
    import io

    take_niceness(nice)

    from quantkit import builders, sources
    from quantkit.recipes import load_recipe

    t0 = time.time()
    where = socket.gethostname()
    try:
        recipe = load_recipe(recipe_file, overrides)
        sources.preflight(recipe.source)
        variant, reused = builders.build(recipe, recipe_file=recipe_file, force=force,
                                         console=Console(file=io.StringIO()))
    except QuantkitError as e:
        return {"node": where, "seconds": time.time() - t0, "error": e.args[0] if e.args else str(e),
                "hint": e.hint or ""}
    except Exception as e:  # noqa: BLE001 - reported with its type, like the local CLI's traceback would
        return {"node": where, "seconds": time.time() - t0, "error": f"{type(e).__name__}: {e}", "hint": ""}
    return {"node": where, "seconds": time.time() - t0, "variant": variant.name, "reused": reused}


def demand(kind: str, nodes: list[dict], cpus_per_build: int | None) -> dict:
    """Ray resources of one build of method `kind` on a cluster of `nodes` (ray.nodes())."""
    live = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if kind in GPU_METHODS and any(r.get("GPU") for r in live):
        return {"num_gpus": 1, "num_cpus": 1}
    cpus = [int(r["CPU"]) for r in live if r.get("CPU")]
    if not cpus:
        raise QuantkitError("the Ray cluster has no node with CPUs to build on", hint="add a node (ray start)")
    return {"num_cpus": cpus_per_build or min(cpus)}


def build_all(recipe_files: list[str], overrides: list[str], *, executor: RayExecutor, force: bool = False,
              cpus_per_build: int | None = None, console: Console | None = None) -> list[BuildOutcome]:
    """Build every recipe at once on the cluster; returns one outcome per recipe, in order, and
    prints each as it finishes. A recipe that fails to load raises before anything runs."""
    from quantkit.recipes import load_recipe

    console = console or Console()
    recipes = [(f, load_recipe(f, overrides)) for f in recipe_files]  # every error now, naming file and field
    ray = executor.connect()
    task = ray.remote(max_retries=0)(_build_on_node)
    nodes = ray.nodes()
    pending: dict[Any, int] = {}
    outcomes = [BuildOutcome(f) for f in recipe_files]
    for i, (f, recipe) in enumerate(recipes):
        ref = task.options(**demand(recipe.method.kind, nodes, cpus_per_build)).remote(
            f, overrides, force, os.getpriority(os.PRIO_PROCESS, 0))
        pending[ref] = i
    console.print(f"building {len(recipes)} recipe(s) on the Ray cluster ({sum(1 for n in nodes if n.get('Alive'))} live nodes)")
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ref)
        try:
            got = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the node or its worker died: that build failed, the others go on
            got = {"error": f"the build's Ray task died: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   "hint": "re-run the same command: finished builds are reused"}
        o = outcomes[i]
        o.variant, o.node, o.seconds = got.get("variant", ""), got.get("node", "?"), float(got.get("seconds", 0.0))
        o.reused, o.error, o.hint = bool(got.get("reused")), got.get("error", ""), got.get("hint", "")
        if o.error:
            console.print(f"[red]{o.recipe}[/] failed on {o.node}: {o.error}" + (f" ({o.hint})" if o.hint else ""))
        else:
            console.print(f"[green]{o.variant}[/] {'reused' if o.reused else f'built in {o.seconds:.0f} s'} on {o.node}")
    console.print(table(outcomes))
    return outcomes


def table(outcomes: list[BuildOutcome]) -> Table:
    t = Table(title="builds on Ray")
    for column in ("recipe", "variant", "node", "seconds", "outcome"):
        t.add_column(column)
    for o in outcomes:
        t.add_row(o.recipe, o.variant or "-", o.node, f"{o.seconds:.0f}",
                  "[red]failed[/]" if o.error else "reused" if o.reused else "[green]built[/]")
    return t
