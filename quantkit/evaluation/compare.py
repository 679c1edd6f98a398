"""`quantkit compare`: measure every variant the same way and store one row per figure.

Orchestration only; the measurements are the registered groups (quantkit.evaluation.groups). Shared
inputs are prepared once, in the core, with the reference tokenizer: fidelity windows, probe
prompts, benchmark prompts. Per model, each engine process a pending group needs is started once
(the engine's OpenAI server for the groups that need it, then its worker for the others), and
every pending group runs against it; a group is skipped when the store already holds it under the
same conditions (resume), and a model whose engine fails is recorded as failed with its reason
while the others go on. The wall time of each engine start and each group is printed, stored with
the run (group "stages") and tabled at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from quantkit import evaldata, hardware, loader, paths, prompts, sources, variants
from quantkit.builders.common import env_versions
from quantkit.engines import registry
from quantkit.envs.specs import env_names
from quantkit.errors import ConfigError, QuantkitError
from quantkit.evaluation import fidelity, groups
from quantkit.evaluation.board import Board
from quantkit.evaluation.groups import Group
from quantkit.evaluation.groups.fidelity import windows_per_call  # noqa: F401 (kl_crosscheck imports it from here)
from quantkit.evaluation.groups.run import (
    Anchors,
    CompareConfig,
    Inputs,
    Run,
    WorkerServed,
    digest,
    failure,
)
from quantkit.evaluation.roofline import fraction_of_bound as check_fraction_of_bound  # noqa: F401 (test_fidelity)
from quantkit.evaluation.serving import requests_needed
from quantkit.evaluation.stages import StageClock
from quantkit.execution.local import LocalExecutor
from quantkit.results.store import Figure, Store, measurement_key

# one serving sweep at a time: servers compare starts itself (groups that need a server, or start
# their own) run on the driver's machine, also under an executor that places workers on cluster
# nodes, and two sweeps at once would share its cores; a server a worker serves (vLLM) may be on a
# node, but its sweep's client still runs here
_DRIVER_SERVER = threading.Lock()
STAGES_GROUP = "stages"  # the figures holding each run's stage times (seconds), one measurement per model and run


@dataclass(frozen=True)
class Comparison:
    """What every model compared against one reference shares in one `compare` call: where figures
    go, how they are measured, the inputs and anchors of that reference, and who starts engines."""

    store: Store
    cfg: CompareConfig
    fp: dict  # the software/hardware fingerprint every measurement key includes
    anchors: Anchors
    inputs: Inputs
    chosen: list[Group]
    console: Console
    settings: dict | None  # engine options from the command line (-o)
    executor: Any
    clock: StageClock  # the stage times of this call (a model measures on a clock of its own)
    run_id: str
    board: Board


def model_identity(name: str) -> dict:
    """What makes a model the same model: a rebuilt variant (same name) is measured again."""
    if sources.is_reference_name(name):
        ident = sources.resolve(sources.reference_spec(name)).identity()
        return {"reference": ident.get("sha256") or ident}
    m = variants.get(name).manifest
    return {"recipe": m.get("recipe_fingerprint"), "finished": m.get("finished"),
            "weights_bytes": m.get("weights_bytes")}


def fingerprint() -> dict:
    hw = hardware.detect()
    return {"hardware": hw.describe(), "versions": {n: env_versions(n) for n in env_names()}}


def fidelity_text(cfg: CompareConfig) -> str:
    """The evaluation text the fidelity windows are cut from (also written out for llama-perplexity
    by quantkit.evaluation.kl_crosscheck). LAMBADA passages hold ~80 tokens: 400 passages (the
    smallest set, so that quick inputs stay the same) or as many as the windows need, with a margin."""
    texts = evaldata.load_texts("lambada", limit=max(400, -(-cfg.window_len * cfg.windows // 60)))
    return "\n\n".join(texts)


def prepare_inputs(cfg: CompareConfig, reference_dir: Path | None = None) -> Inputs:
    """Inputs rendered once with the reference's tokenizer (and chat template)."""
    ref = reference_dir or Path(sources.resolve("default").location)
    [stream] = prompts.render(ref, [prompts.plain(fidelity_text(cfg))])
    wins = fidelity.windows(list(stream.token_ids), cfg.window_len, cfg.windows)
    if len(wins) < cfg.windows:
        raise ConfigError(f"the fidelity text holds {len(stream.token_ids)} tokens: {len(wins)} windows of "
                          f"{cfg.window_len}, fewer than the {cfg.windows} asked for",
                          hint="ask for fewer or shorter windows")
    spec = yaml.safe_load((paths.evals_dir() / "probes.yaml").read_text())
    rendered = prompts.render(ref, [prompts.chat(p["prompt"]) for p in spec["probes"]])
    ids, n = list(stream.token_ids), cfg.bench_input
    slices = [ids[i * n:(i + 1) * n] for i in range(len(ids) // n)]
    bench = slices[:cfg.bench_batch]
    # distinct prompts for the serving sweep (cycled only if the text runs out; see serving.sweep)
    serving = slices[cfg.bench_batch:][:requests_needed(list(cfg.serving_levels), cfg.serving_repeats)]
    vocab = json.loads((ref / "config.json").read_text())["vocab_size"]
    return Inputs(wins, spec["probes"], [list(p.token_ids) for p in rendered], spec["max_tokens"], bench, serving,
                  vocab, ref)


def selected_groups(cfg: CompareConfig) -> list[Group]:
    """The groups this configuration measures, in running order: those needing the engine's server
    first (the worker would hold the memory otherwise), then the worker's by their `order`."""
    chosen = [groups.get(n) for n in (cfg.groups or groups.names())]  # an unknown name is a ConfigError
    return sorted((g for g in chosen if g.applies(cfg)),
                  key=lambda g: (groups.NEEDS.index(g.needs), g.order, g.name))


def _key(target: loader.Target, settings: dict, group: str, conditions: dict, fp: dict, extra: dict | None = None) -> str:
    """`extra`: what the figures are relative to (the baseline rows or reference answers they are
    scored against), so that a re-measured baseline re-measures what depends on it."""
    cond = {**conditions, "model": model_identity(target.name), **(extra or {})}
    return measurement_key(target.name, target.engine.name, settings, group, cond, fp)


def reference_of(name: str) -> str:
    """The reference a variant is measured against: the source model it was built from."""
    if sources.is_reference_name(name):
        return sources.reference_name(sources.reference_spec(name))
    if Path(name).suffix == ".gguf" and Path(name).is_file():
        return "reference"  # a bare GGUF file carries no source: compared with the embedded default
    return sources.reference_name(variants.get(name).manifest["source"]["spec"])


def plan(names: list[str], all_: bool) -> list[tuple[str, list[str]]]:
    """[(reference, [variants built from it])]: every variant is compared with its own source model."""
    chosen = [v.name for v in variants.all_variants() if v.complete] if all_ else list(names)
    members_of: dict[str, list[str]] = {}
    for n in chosen:
        members = members_of.setdefault(reference_of(n), [])
        if not sources.is_reference_name(n):
            members.append(n)
    return sorted(members_of.items(), key=lambda kv: kv[0] != "reference") or [("reference", [])]


def processes(pending: list[Group], engine: Any) -> list[tuple[str, list[Group], bool]]:
    """The engine processes one model needs, in order, as (what it is, its groups, whether its worker
    also serves HTTP). An engine whose worker serves its OpenAI server (vLLM) gets one process for the
    server and worker groups, the serving sweep first; otherwise each `needs` gets its own."""
    by_needs = {needs: [g for g in pending if g.needs == needs] for needs in groups.NEEDS}
    if engine.serves_from_worker and by_needs["server"]:
        by_needs["worker"] = by_needs.pop("server") + by_needs["worker"]
        return [(n, todo, n == "worker") for n, todo in by_needs.items() if todo]
    return [(n, todo, False) for n, todo in by_needs.items() if todo]


@contextlib.contextmanager
def _engine_process(run: Run, needs: str, executor: Any, clock: StageClock, console: Console, serve: bool = False):
    """Start the engine process `needs` names for `run` (its OpenAI server or its worker; with
    `serve`, a worker that also serves the OpenAI server), timed as a "start" stage, and stop it on
    exit; `run.history` restarts with the process."""
    from quantkit.server import EngineServer

    what = "worker+server" if serve else needs
    labels = {"model": run.target.name, "engine": run.target.engine.name, "what": what}
    run.history = []
    if needs == "own":  # the group starts its own processes (and times them in its figures)
        try:
            yield
        finally:
            run.worker = run.server = None
        return
    with contextlib.ExitStack() as stack:
        with clock.stage("start", **labels) as row:
            if needs == "server":
                run.server = stack.enter_context(EngineServer(run.target))
            else:
                run.worker = stack.enter_context(executor.start(run.target, label="compare"))
                run.node = str(getattr(run.worker, "node", "local"))
                load = run.worker.call("info").get("load_seconds")  # the first answer comes once the model is loaded
                if load is not None:
                    row["load_s"] = round(float(load), 1)
                if serve:  # on the worker's node: its own address there (a Ray node's IP), else loopback
                    host = str(getattr(run.worker, "ip", None) or "127.0.0.1")
                    served = run.worker.call("serve_http", host=host, served_name=run.target.name)
                    run.server = WorkerServed(served["url"], served["model"])
        console.print(f"  {what} started in {row['seconds']:.0f} s")
        try:
            yield
        finally:
            run.worker = run.server = None


def _run_group(store: Store, run: Run, group: Group, setup: str, console: Console, clock: StageClock,
               board: Board) -> None:
    """Measure one group and store it; any failure is stored with its reason (the others go on),
    except a dead engine, which the caller handles. `setup` digests the group's conditions. Every
    figure records what ran before it in the same engine process, and which other models were
    being measured at the same time (only when some were: variants fanned out on a cluster)."""
    key, ran_before = run.keys[group.name], list(run.history)
    board.update(run.target.name, group=group.name, state="measuring")
    alongside = set(board.busy_besides(run.target.name))
    with clock.stage("group", model=run.target.name, engine=run.target.engine.name, what=group.name) as row:
        try:
            figs = group.measure(run)  # run.history: what ran before it (memory records it as peak_after_groups)
            alongside.update(board.busy_besides(run.target.name))
        except Exception as e:
            run.history.append(group.name)  # it ran, and failed
            if not run.engine_alive():
                raise
            row["status"] = "failed"
            reason = e.args[0] if isinstance(e, QuantkitError) else f"{type(e).__name__}: {e}"
            store.put(key, [run.failed(group.name, reason, conditions={"ran_before": ran_before})])
            console.print(f"  [red]{group.name} failed[/]: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            return
    run.history.append(group.name)
    for f in figs:  # lets the leaderboard tell figures measured the same way from the others
        f.conditions.setdefault("setup", setup)
        f.conditions.setdefault("compared_with", run.reference_name)
        f.conditions.setdefault("ran_before", ran_before)
        if alongside:
            f.conditions.setdefault("measured_alongside", sorted(alongside))
    store.put(key, figs)
    console.print(f"  {group.name}: done in {row['seconds']:.0f} s")


def compare(names: list[str], cfg: CompareConfig, *, all_: bool = False, store: Store | None = None,
            console: Console | None = None, settings: dict | None = None, executor: Any = None,
            clock: StageClock | None = None) -> Store:
    """Measure `names` (or every complete variant) with their references; `executor` starts
    workers (default LocalExecutor), `clock` collects the stage times (a fresh one by default)."""
    console = console or Console()
    store = store or Store()
    clock = clock if clock is not None else StageClock()
    executor = executor or LocalExecutor()
    fp = fingerprint()
    chosen = selected_groups(cfg)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    parallel = max(1, int(getattr(executor, "parallel_models", 1)))
    board = Board()
    for reference, members in plan(names, all_):
        if reference != "reference":
            console.print(f"[bold]compared with {reference}[/] (their source model)")
        anchors = Anchors(reference)
        c = Comparison(store, cfg, fp, anchors, prepare_inputs(cfg, loader.locate(reference)[1]), chosen, console,
                       settings, executor, clock, run_id, board)
        _measure_model(c, reference, "reference")
        ordered, baselines = with_engine_baselines(reference, members, anchors, console)
        for name in ordered:  # the baselines come first: the variants are scored against them
            if name in baselines:
                _measure_model(c, name, "baseline")
        fan_out([n for n in ordered if n not in baselines], lambda n, c=c: _measure_model(c, n, "variant"),
                parallel, board, console)
    if clock.rows:
        console.print(clock.table("compare: stage times (s)"))
    return store


def fan_out(names: list[str], measure: Any, parallel: int, board: Board, console: Console) -> None:
    """Measure the variants one after another (the local executor), or up to `parallel` at once,
    each in its own thread (a cluster executor places each one's worker on a node with room). They
    are independent: each is scored against the reference and baselines measured before. With more
    than one at a time, a live table shows each variant's node, group and state."""
    if parallel <= 1 or len(names) <= 1:
        for name in names:
            measure(name)
        return
    for name in names:
        board.update(name)
    live = None
    if console.is_terminal:
        from rich.live import Live

        live = Live(board.table(), console=console, refresh_per_second=2, get_renderable=board.table)
        live.start()
    pool = ThreadPoolExecutor(max_workers=min(parallel, len(names)), thread_name_prefix="compare")
    try:
        for future in [pool.submit(measure, name) for name in names]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if live is not None:
            live.stop()
    console.print(board.table("compare: variants"))


def _engine_of(name: str) -> str | None:
    try:
        return loader.default_engine(loader.locate(name)[2]).name
    except QuantkitError:
        return None  # measured (and its load failure recorded) like any other member


def with_engine_baselines(reference: str, members: list[str], anchors: Anchors,
                          console: Console) -> tuple[list[str], set[str]]:
    """Members in measuring order, each engine's baseline (built when missing) before the
    variants it anchors; returns (order, baseline names).

    An engine's full-precision baseline (`Engine.baseline_recipe`) is the reference in that
    engine's own format, unquantized, so that a variant's divergence from it is quantization alone
    and its own divergence from the reference is the engine's arithmetic (the engine floor); an
    engine without one (vLLM) runs the reference itself."""
    engines = {e for m in members if (e := _engine_of(m)) is not None and registry.get(e).baseline_recipe}
    order, chosen = list(members), set()
    for engine in sorted(engines):
        try:
            name = build_engine_baseline(reference, engine, console)
        except QuantkitError as e:
            anchors.missing[engine] = f"its full-precision baseline could not be built: {e.args[0]}"
            console.print(f"[red]{engine} baseline: cannot build[/] ({e.args[0]})")
            continue
        order = [name, *[m for m in order if m != name]]
        chosen.add(name)
    return order, chosen


def build_engine_baseline(reference: str, engine: str, console: Console | None = None) -> str:
    """Build (or reuse) `engine`'s full-precision baseline of `reference`; returns its name."""
    import re

    from quantkit import builders
    from quantkit.recipes import load_recipe

    recipe_file = registry.get(engine).baseline_recipe
    if not recipe_file:
        raise QuantkitError(f"{engine} has no full-precision baseline recipe (it is scored against the reference)")
    spec = sources.reference_spec(reference)
    overrides = [] if reference == "reference" else [
        f"source={spec}", f"name={re.sub(r'[^A-Za-z0-9._-]+', '-', spec).strip('-.')}-gguf-f16"]
    recipe = load_recipe(paths.recipes_dir() / recipe_file, overrides)
    try:
        variant, _ = builders.build(recipe, console=console)
    except QuantkitError:
        raise
    except Exception as e:
        raise QuantkitError(f"{type(e).__name__}: {e}") from e
    return variant.name


def _measure_model(c: Comparison, name: str, role: str) -> None:
    """Every pending group of one model; a reference or baseline records itself in `c.anchors`.
    Its stage times are kept on a clock of its own (models may run in parallel threads) and
    added to `c.clock` at the end."""
    own = StageClock(clock=c.clock.clock)
    try:
        _measure_one(dataclasses.replace(c, clock=own), name, role)
    except BaseException:
        c.board.update(name, state="failed")
        raise
    finally:
        c.clock.rows.extend(own.rows)  # one list.extend: atomic under the GIL


def _measure_one(c: Comparison, name: str, role: str) -> None:
    store, anchors, inputs, chosen, cfg, fp = c.store, c.anchors, c.inputs, c.chosen, c.cfg, c.fp
    console, executor, clock, board = c.console, c.executor, c.clock, c.board
    reference = anchors.reference
    try:
        target = loader.load(name, settings=engine_settings(name, cfg, c.settings))
    except QuantkitError as e:
        engine = _engine_of(name) or "?"
        if role == "baseline":
            anchors.missing[engine] = f"its full-precision baseline {name} cannot load: {e.args[0]}"
        for g in chosen:
            key = measurement_key(name, engine, {}, g.name, g.conditions(cfg, inputs), fp)
            store.put(key, [failure(name, engine, g.name, f"cannot load: {e.args[0]}", reference, fp)])
        console.print(f"[red]{name}: cannot load[/] ({e.args[0]})")
        board.update(name, engine=engine, state="failed", group="-")
        return
    run = Run(target, None, inputs, cfg, fp, role, reference, anchors)
    conds = {g.name: g.conditions(cfg, inputs) for g in chosen}
    run.keys = {g.name: _key(target, run.settings, g.name, conds[g.name], fp, g.relative_to(run)) for g in chosen}
    for g in chosen:
        g.anchor(run, run.keys[g.name])
    pending = [g for g in chosen if cfg.force or not g.is_done(run, store, run.keys[g.name])]
    board.update(name, engine=target.engine.name)
    failed = False

    def store_stages() -> None:  # as they end, so that a killed compare keeps the times it took
        _store_stages(store, run, clock.rows, c.run_id)

    if not pending:
        console.print(f"{name}: every figure already measured (use --force to re-measure)")
    else:
        console.print(f"[bold]{name}[/] on {target.engine.name}: {', '.join(g.name for g in pending)}")
        for needs, todo, serve in processes(pending, target.engine):
            on_driver = needs in ("server", "own")  # processes compare starts on the driver: one at a time
            try:
                with _DRIVER_SERVER if on_driver else contextlib.nullcontext():
                    board.update(name, group=f"start {needs}", state="starting", node="driver" if on_driver else "-")
                    with _engine_process(run, needs, executor, clock, console, serve):
                        board.update(name, node="driver" if on_driver else run.node)
                        store_stages()
                        for g in todo:
                            # serving sweeps never overlap, wherever their server runs (latency figures)
                            with _DRIVER_SERVER if g.needs == "server" and not on_driver else contextlib.nullcontext():
                                _run_group(store, run, g, digest(conds[g.name]), console, clock, board)
                            store_stages()
            except QuantkitError as e:
                failed = True
                for g in todo:
                    if not store.done(run.keys[g.name]):
                        store.put(run.keys[g.name], [run.failed(g.name, e.args[0])])
                console.print(f"[red]{name}: engine failed[/] ({e.args[0].splitlines()[0]})")
    for g in chosen:
        g.after(run, store, run.keys[g.name])
    store_stages()
    board.update(name, group="-", state="failed" if failed else "done")


def _store_stages(store: Store, run: Run, rows: list[dict], run_id: str) -> None:
    """This model's stage times in this run, as figures of group "stages" (seconds), one
    measurement per model and run: `start:<server|worker>` and `group:<name>`."""
    if not rows:
        return
    figs: list[Figure] = []
    before: list[str] = []
    for r in rows:
        if r["stage"] == "start":
            before = []
        cond = {"run": run_id, "outcome": r["status"], "ran_before": list(before), "compared_with": run.reference_name}
        if "load_s" in r:
            cond["engine_load_s"] = r["load_s"]
        figs.append(run.fig(STAGES_GROUP, f"{r['stage']}:{r['what']}", r["seconds"], None, 1, "s", conditions=cond))
        if r["stage"] == "group":
            before.append(r["what"])
    store.put(measurement_key(run.target.name, run.target.engine.name, run.settings, STAGES_GROUP,
                              {"run": run_id}, run.fp), figs)


def engine_settings(name: str, cfg: CompareConfig, extra: dict | None) -> dict:
    """Same context and log-prob settings for every model of an engine (Engine.compare_settings),
    then the user's own: `key` for every model, `ENGINE.key` (e.g. `llamacpp.n_threads`) only for
    that engine's models, so that a setting one engine lacks does not fail the others."""
    engine = loader.default_engine(loader.locate(name)[2])
    # 2048 holds GSM8K's 5-shot prompts (~1.1k tokens) plus 256 generated tokens
    context = max(cfg.window_len + 64, cfg.bench_input + cfg.bench_output, 2048)
    return {**engine.compare_settings(context), **scoped_settings(extra, engine.name)}


def scoped_settings(extra: dict | None, engine: str) -> dict:
    """The user's settings that apply to `engine`: unscoped keys, and `engine.key` ones (prefix dropped)."""
    out: dict = {}
    known = set(registry.names())
    for key, value in (extra or {}).items():
        scope, dot, name = key.partition(".")
        if dot and scope in known:
            if scope == engine:
                out[name] = value
        else:
            out[key] = value
    return out
