"""`quantkit compare`: measure every variant the same way and store one row per figure.

Shared inputs are prepared once, in the core, with the reference tokenizer: fidelity windows,
probe prompts, benchmark prompts. Per variant the engine starts once as a worker (every offline group)
and once as its own OpenAI server (the serving sweep); each measurement group is
skipped when the store already holds it under the same conditions (resume), and a variant whose
engine fails is recorded as failed with its reason while the others go on.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from rich.console import Console

from quantkit import evaldata, hardware, loader, paths, prompts, sources, variants
from quantkit.atomic import write_text_atomic
from quantkit.builders.common import env_versions
from quantkit.envs.specs import ENGINE_NAMES
from quantkit.errors import ConfigError, QuantkitError
from quantkit.evaluation import fidelity
from quantkit.evaluation.memory import memory_figures
from quantkit.evaluation.serving import requests_needed
from quantkit.evaluation.stats import median_spread
from quantkit.execution.local import LocalExecutor
from quantkit.execution.worker_client import WorkerClient
from quantkit.results.store import Figure, Store, measurement_key

# memory last, so that peak memory includes the work done before it; serving needs the engine's
# HTTP server, so it runs after the worker is closed (a second start of the same engine)
GROUPS = ("fidelity", "probes", "tasks", "speed", "memory")
SERVER_GROUPS = ("serving",)


@dataclass
class CompareConfig:
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    quick: bool = False
    force: bool = False
    top_k: int = 20
    window_len: int = 512
    windows: int = 16
    bench_batch: int = 8
    bench_input: int = 128
    bench_output: int = 64
    bench_repeats: int = 3
    serving_levels: tuple[int, ...] = (1, 4, 16)
    serving_output: int = 64
    serving_repeats: int = 3
    temperatures: tuple[float, ...] = ()
    top_p: float = 1.0
    sweep_samples: int = 8
    sweep_problems: int = 50
    seed: int = 0

    @classmethod
    def make(cls, quick: bool, **kw) -> "CompareConfig":
        base = dict(window_len=256, windows=4, bench_batch=4, bench_input=64, bench_output=32, bench_repeats=3,
                    serving_levels=(1, 4), serving_output=32, serving_repeats=2, sweep_samples=4,
                    sweep_problems=10) if quick else {}
        return cls(quick=quick, **{**base, **{k: v for k, v in kw.items() if v is not None}})


def digest(obj) -> str:
    """Short content hash of anything JSON-serialisable (inputs, files) for measurement keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    return {"hardware": hw.describe(), "versions": {n: env_versions(n) for n in ENGINE_NAMES}}


@dataclass
class Inputs:
    """Everything every variant sees, prepared once."""

    windows: list[list[int]]
    probes: list[dict]
    probe_ids: list[list[int]]
    probe_max_tokens: int
    bench_prompts: list[list[int]]
    serving_prompts: list[list[int]]
    vocab_size: int
    reference_dir: Path


def prepare_inputs(cfg: CompareConfig, reference_dir: Path | None = None) -> Inputs:
    """Inputs rendered once with the reference's tokenizer (and chat template)."""
    ref = reference_dir or Path(sources.resolve("default").location)
    texts = evaldata.load_texts("lambada", limit=400)
    [stream] = prompts.render(ref, [prompts.plain("\n\n".join(texts))])
    wins = fidelity.windows(list(stream.token_ids), cfg.window_len, cfg.windows)
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


def _reference_rows_file(reference_key: str) -> Path:
    """The reference's per-position rows, named by the reference's own fidelity measurement key
    (its settings, engine versions and the windows): variants are scored against exactly that."""
    return paths.cache_dir() / "reference" / f"{reference_key}.json"


def _score_windows(worker: WorkerClient, inputs: Inputs, cfg: CompareConfig) -> list[dict]:
    rows: list[dict] = []
    for per_window in worker.call("logprobs", sequences=inputs.windows, top_k=cfg.top_k):
        rows += fidelity.scored_slice(per_window, cfg.window_len)
    return rows


def measure_fidelity(ctx: "Run") -> list[Figure]:
    rows = _score_windows(ctx.worker, ctx.inputs, ctx.cfg)
    ref_file = _reference_rows_file(ctx.reference_key)
    if ctx.is_reference:
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(ref_file, json.dumps(rows))
    if not ref_file.exists():
        raise ConfigError("the reference distribution is not cached yet; compare includes the reference first")
    ref_rows = json.loads(ref_file.read_text())
    r = fidelity.summarize(ref_rows, rows, ctx.inputs.vocab_size)
    cond = {"data": "lambada", "windows": len(ctx.inputs.windows), "window_len": ctx.cfg.window_len,
            "scored": "second half of each window", "top_k": ctx.cfg.top_k,
            "reference": f"{ctx.reference_name} on vllm", "reference_rows": ctx.reference_key}
    return [ctx.fig("fidelity", "ppl", r.ppl, r.ppl_stderr, r.n, conditions=cond),
            ctx.fig("fidelity", "ppl_ratio", r.ppl_ratio, r.ppl_ratio_stderr, r.n,
                    conditions={**cond, "stderr": "paired over the same tokens"}),
            ctx.fig("fidelity", "kld_mean", r.kld_mean, r.kld_stderr, r.n, "nats", conditions=cond),
            ctx.fig("fidelity", "kld_p99", r.kld_p99, None, r.n, "nats", conditions=cond),
            ctx.fig("fidelity", "top1_agreement", r.top1, r.top1_stderr, r.n, conditions=cond)]


def measure_probes(ctx: "Run") -> list[Figure]:
    outs = ctx.worker.call("generate", prompts=ctx.inputs.probe_ids, temperature=0.0,
                           max_tokens=ctx.inputs.probe_max_tokens, seed=0)
    cond = {"sampling": "greedy", "max_tokens": ctx.inputs.probe_max_tokens, "chat_template": "reference tokenizer"}
    return [ctx.fig("probes", f"probe:{p['id']}", None, None, 1, text=o[0]["text"], conditions={**cond, "prompt": p["prompt"]})
            for p, o in zip(ctx.inputs.probes, outs)]


def measure_speed(ctx: "Run") -> list[Figure]:
    cfg = ctx.cfg
    res = ctx.worker.call("bench", prompts=ctx.inputs.bench_prompts, max_tokens=cfg.bench_output,
                          repeats=cfg.bench_repeats)
    rates = [r["output_tokens"] / r["seconds"] for r in res["runs"]]
    med, lo, hi, p90 = median_spread(rates)
    cond = {"batch": cfg.bench_batch, "input_tokens": cfg.bench_input, "output_tokens": cfg.bench_output,
            "repeats": cfg.bench_repeats, "spread": [lo, hi], "p90": p90, "greedy": True, "ignore_eos": True,
            "prefix_cache": "cleared before each run (every run pays its prefill)",
            "batching": "one batch (vLLM)" if ctx.target.engine.name == "vllm" else "sequential (llama-cpp-python)"}
    return [ctx.fig("speed", "offline_tokens_per_s", med, (hi - lo) / 2, cfg.bench_repeats, "tok/s", conditions=cond)]


def measure_memory(ctx: "Run") -> list[Figure]:
    figs = memory_figures(ctx)
    for f in figs:  # the peak depends on what this engine process did before (resume may skip groups)
        f.conditions["peak_after_groups"] = list(ctx.history)
    return figs


def measure_tasks(ctx: "Run") -> list[Figure]:
    from quantkit.evaluation.scorer import WorkerScorer
    from quantkit.evaluation.tasks import run_tasks

    results = run_tasks(WorkerScorer(ctx.worker, ctx.inputs.reference_dir), ctx.cfg.tasks, limit=ctx.cfg.limit)
    return [ctx.fig(f"task:{r['task']}", r["metric"], r["value"], r["stderr"], r["n"],
                    conditions={"lm_eval": r["lm_eval_version"], "num_fewshot": r["num_fewshot"],
                                "limit": ctx.cfg.limit}) for r in results]


def measure_serving(ctx: "Run") -> list[Figure]:
    """Concurrency sweep against the engine's OpenAI server, then the decode roofline."""
    from quantkit.evaluation.serving import sweep
    from quantkit.server import EngineServer

    cfg = ctx.cfg
    with EngineServer(ctx.target) as server:
        levels = sweep(server.url, server.model_name, ctx.inputs.serving_prompts, list(cfg.serving_levels),
                       cfg.serving_output, cfg.serving_repeats)
    figs = []
    for lv in levels:
        c = lv["concurrency"]
        cond = {"concurrency": c, "requests": lv["requests"], "repeats": lv["repeats"], "input_tokens": cfg.bench_input,
                "distinct_prompts": len(ctx.inputs.serving_prompts),
                "output_tokens": cfg.serving_output, "server": ctx.target.engine.name + " OpenAI server",
                "ignore_eos": True, "greedy": True,
                "spread_tokens_per_s": lv["output_tokens_per_s_spread"], "spread_requests_per_s": lv["requests_per_s_spread"]}
        n = lv["requests"] * lv["repeats"]
        figs += [ctx.fig("serving", f"ttft_median_ms@{c}", lv["ttft_median_s"] * 1e3, None, n, "ms", conditions=cond),
                 ctx.fig("serving", f"ttft_p90_ms@{c}", lv["ttft_p90_s"] * 1e3, None, n, "ms", conditions=cond),
                 ctx.fig("serving", f"itl_median_ms@{c}", lv["itl_median_s"] * 1e3, None, n, "ms", conditions=cond),
                 ctx.fig("serving", f"itl_p90_ms@{c}", lv["itl_p90_s"] * 1e3, None, n, "ms", conditions=cond),
                 ctx.fig("serving", f"output_tokens_per_s@{c}", lv["output_tokens_per_s"],
                         (lv["output_tokens_per_s_spread"][1] - lv["output_tokens_per_s_spread"][0]) / 2,
                         lv["repeats"], "tok/s", conditions=cond),
                 ctx.fig("serving", f"requests_per_s@{c}", lv["requests_per_s"], None, lv["repeats"], "req/s",
                         conditions=cond)]
    single = next((lv for lv in levels if lv["concurrency"] == 1), None)
    if single:
        try:  # a roofline that cannot be computed is a failed roofline, not a lost serving sweep
            figs += _roofline(ctx, single)
        except Exception as e:  # noqa: BLE001 - recorded with its reason
            figs.append(_failed(ctx, "roofline", str(e) or type(e).__name__))
    return figs


def _roofline(ctx: "Run", single: dict) -> list[Figure]:
    from quantkit.evaluation.memory import kv_bytes_per_token
    from quantkit.evaluation.roofline import bound_tokens_per_s, measure_bandwidth_gbs

    cfg = ctx.cfg
    if hardware.detect().has_cuda:
        raise QuantkitError("not computed on a GPU machine: quantkit measures host-memory copy bandwidth, "
                            "which does not bound a GPU's decode (device bandwidth is not measured yet)")
    config = json.loads((ctx.inputs.reference_dir / "config.json").read_text())
    weights = _weights_bytes(ctx)
    if not weights:
        raise QuantkitError("the variant's manifest records no weight size")
    kv = kv_bytes_per_token(config, ctx.target.kv_cache_type) or 0.0
    bw, threads = measure_bandwidth_gbs()
    context = cfg.bench_input + cfg.serving_output // 2
    bound = bound_tokens_per_s(bw, weights, kv, context)
    decode = 1.0 / single["itl_median_s"]
    cond = {"bandwidth": f"numpy copy, {threads} threads (GB/s, read+write), best of 5", "bandwidth_gbs": bw,
            "bytes_per_token": weights + kv * context, "weights_bytes": weights, "context": context,
            "decode_rate": "1 / median inter-token latency at concurrency 1"}
    return [ctx.fig("roofline", "decode_tokens_per_s", decode, None, single["requests"], "tok/s", conditions=cond),
            ctx.fig("roofline", "bound_tokens_per_s", bound, None, 1, "tok/s", conditions=cond),
            ctx.fig("roofline", "fraction_of_bound", decode / bound, None, 1, conditions=cond)]


def measure_sweep(ctx: "Run") -> list[Figure]:
    """GSM8K per temperature: N seeded samples per problem -> accuracy and diversity."""
    from quantkit.evaluation import sweeps

    cfg = ctx.cfg
    docs = sweeps.problems(cfg.sweep_problems)
    rendered = prompts.render(ctx.inputs.reference_dir,
                              [prompts.chat(f"{d['question']}\n\n{sweeps.INSTRUCTION}") for d in docs])
    ids = [list(p.token_ids) for p in rendered]
    golds = [sweeps.gold(d["answer"]) for d in docs]
    figs = []
    for t in cfg.temperatures:
        outs = ctx.worker.call("generate", prompts=ids, temperature=t, top_p=cfg.top_p, max_tokens=256,
                               seed=cfg.seed, n=cfg.sweep_samples)
        r = sweeps.score(golds, [[o["text"] for o in per] for per in outs])
        cond = {"task": "gsm8k (chat prompt, flexible-extract exact match)", "temperature": t, "top_p": cfg.top_p,
                "samples_per_problem": cfg.sweep_samples, "problems": r["problems"], "seed": cfg.seed,
                "max_tokens": 256, "seeding": "sample i uses seed + i"}
        if cfg.top_p < 1:  # the engines chain their samplers differently; stated, not hidden
            cond["sampler_order"] = ("top-p, then temperature (llama-cpp-python)" if ctx.target.engine.name == "llamacpp"
                                     else "temperature, then top-p (vLLM)")
        figs += [ctx.fig("sweep", f"accuracy@T={t:g}", r["accuracy"], r["accuracy_stderr"], r["problems"],
                         conditions=cond),
                 ctx.fig("sweep", f"diversity@T={t:g}", r["diversity"], r["diversity_stderr"], r["problems"],
                         conditions=cond)]
    return figs


def _weights_bytes(ctx: "Run") -> float:
    from quantkit import safetensors_info

    if ctx.is_reference:
        return float(safetensors_info.tensor_bytes(ctx.target.model_path))
    return float(variants.get(ctx.target.name).manifest.get("weights_bytes") or 0)


MEASURES: dict[str, Callable[["Run"], list[Figure]]] = {
    "serving": measure_serving,
    "sweep": measure_sweep,
    "memory": measure_memory, "fidelity": measure_fidelity, "probes": measure_probes,
    "tasks": measure_tasks, "speed": measure_speed,
}


@dataclass
class Run:
    """One variant on one engine: what a measurement needs."""

    target: loader.Target
    worker: WorkerClient | None
    inputs: Inputs
    cfg: CompareConfig
    fp: dict
    is_reference: bool
    reference_name: str = "reference"
    reference_key: str = ""
    history: list[str] = field(default_factory=list)  # groups this engine process ran, in order

    @property
    def settings(self) -> dict:
        return {**self.target.settings.model_dump(), "kv_cache_type": self.target.kv_cache_type}

    def fig(self, group: str, metric: str, value, unc=None, n=None, unit=None, *, text=None, conditions=None) -> Figure:
        return Figure(self.target.name, self.target.engine.name, group, metric, value, unc, n, unit, text,
                      settings=self.settings, conditions=conditions or {}, fingerprint=self.fp)


def group_conditions(group: str, cfg: CompareConfig, inputs: Inputs) -> dict:
    """Everything that changes a group's figures besides the model, engine settings and versions:
    its configuration and a digest of the exact inputs it sends (so edited data, probes or task
    configs are measured again instead of reusing stale figures)."""
    if group == "fidelity":
        return {"top_k": cfg.top_k, "window_len": cfg.window_len, "windows": cfg.windows,
                "inputs": digest(inputs.windows)}
    if group == "probes":
        return {"inputs": digest([inputs.probe_ids, inputs.probe_max_tokens])}
    if group == "speed":
        return {**{k: getattr(cfg, k) for k in ("bench_batch", "bench_input", "bench_output", "bench_repeats")},
                "inputs": digest(inputs.bench_prompts), "prefix_cache": "cleared before each run"}
    if group == "tasks":
        from quantkit.evaluation.tasks import lm_eval_version

        files = sorted((paths.evals_dir() / "tasks").glob("*.yaml")) + [evaldata.definitions_file()]
        return {"tasks": sorted(cfg.tasks), "limit": cfg.limit, "lm_eval": lm_eval_version(),
                "configs": digest({f.name: f.read_text() for f in files})}
    if group == "sweep":
        return {"temperatures": list(cfg.temperatures), "top_p": cfg.top_p, "samples": cfg.sweep_samples,
                "problems": cfg.sweep_problems, "seed": cfg.seed,
                "configs": digest((paths.evals_dir() / "tasks" / "qk_gsm8k.yaml").read_text())}
    if group == "serving":
        return {"levels": list(cfg.serving_levels), "output": cfg.serving_output, "repeats": cfg.serving_repeats,
                "input": cfg.bench_input, "inputs": digest(inputs.serving_prompts)}
    return {}


def _key(target: loader.Target, settings: dict, group: str, conditions: dict, fp: dict, reference_key: str = "") -> str:
    cond = {**conditions, "model": model_identity(target.name)}
    if group == "fidelity" and not sources.is_reference_name(target.name):
        cond["reference_rows"] = reference_key  # scored against exactly these reference rows
    return measurement_key(target.name, target.engine.name, settings, group, cond, fp)


def _run_group(store: Store, key: str, run: "Run", group: str, setup: str, console: Console) -> None:
    """Measure one group and store it; any failure is stored with its reason (the others go on),
    except a dead engine, which the caller handles. `setup` digests the group's conditions."""
    t0 = time.time()
    try:
        figs = MEASURES[group](run)
    except Exception as e:  # noqa: BLE001 - every failure is recorded with its reason, not raised
        if run.worker is not None and not run.worker.alive:
            raise
        store.put(key, [_failed(run, group, f"{type(e).__name__}: {e}" if not isinstance(e, QuantkitError)
                                else e.args[0])])
        console.print(f"  [red]{group} failed[/]: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return
    for f in figs:  # lets the leaderboard tell figures measured the same way from the others
        f.conditions.setdefault("setup", setup)
        f.conditions.setdefault("compared_with", run.reference_name)
    store.put(key, figs)
    run.history.append(group)
    console.print(f"  {group}: done in {time.time() - t0:.0f} s")


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
    groups: dict[str, list[str]] = {}
    for n in chosen:
        members = groups.setdefault(reference_of(n), [])
        if not sources.is_reference_name(n):
            members.append(n)
    return sorted(groups.items(), key=lambda kv: kv[0] != "reference") or [("reference", [])]


def compare(names: list[str], cfg: CompareConfig, *, all_: bool = False, store: Store | None = None,
            console: Console | None = None, settings: dict | None = None) -> Store:
    console = console or Console()
    store = store or Store()
    fp = fingerprint()
    groups = [g for g in GROUPS if g != "tasks" or cfg.tasks]
    if cfg.temperatures:
        groups.insert(groups.index("speed"), "sweep")
    for reference, members in plan(names, all_):
        if reference != "reference":
            console.print(f"[bold]compared with {reference}[/] (their source model)")
        inputs = prepare_inputs(cfg, loader.locate(reference)[1])
        reference_key = ""
        for name in [reference, *members]:
            reference_key = _measure_model(store, name, reference, reference_key, inputs, groups, cfg, fp, console,
                                           settings)
    return store


def _measure_model(store: Store, name: str, reference: str, reference_key: str, inputs: Inputs, groups: list[str],
                   cfg: CompareConfig, fp: dict, console: Console, settings: dict | None) -> str:
    """Every pending group of one model; returns the reference's fidelity key (the rows variants use)."""
    try:
        target = loader.load(name, settings=engine_settings(name, cfg, settings))
    except QuantkitError as e:
        try:
            engine = loader.default_engine(loader.locate(name)[2]).name
        except QuantkitError:
            engine = "?"
        _record_failure(store, name, engine, [*SERVER_GROUPS, *groups], cfg, inputs, fp,
                        f"cannot load: {e.args[0]}", reference)
        console.print(f"[red]{name}: cannot load[/] ({e.args[0]})")
        return reference_key
    run = Run(target, None, inputs, cfg, fp, sources.is_reference_name(name), reference)
    conds = {g: group_conditions(g, cfg, inputs) for g in (*groups, *SERVER_GROUPS)}
    keyed = {g: _key(target, run.settings, g, conds[g], fp, reference_key) for g in conds}
    if run.is_reference:
        reference_key = keyed["fidelity"]
    run.reference_key = reference_key
    pending = [g for g in groups if cfg.force or not store.done(keyed[g])
               or (g == "fidelity" and run.is_reference and not _reference_rows_file(keyed[g]).exists())]
    server_pending = [g for g in SERVER_GROUPS if cfg.force or not store.done(keyed[g])]
    if not pending and not server_pending:
        console.print(f"{name}: every figure already measured (use --force to re-measure)")
        return reference_key
    console.print(f"[bold]{name}[/] on {target.engine.name}: {', '.join(server_pending + pending)}")
    for g in server_pending:  # engine's HTTP server first: the worker below holds the memory otherwise
        _run_group(store, keyed[g], run, g, digest(conds[g]), console)
    if not pending:
        return reference_key
    try:
        with LocalExecutor().start(target, label="compare") as worker:
            run.worker = worker
            for g in pending:
                _run_group(store, keyed[g], run, g, digest(conds[g]), console)
    except QuantkitError as e:
        for g in pending:
            if not store.done(keyed[g]):
                store.put(keyed[g], [_failed(run, g, e.args[0])])
        console.print(f"[red]{name}: engine failed[/] ({e.args[0].splitlines()[0]})")
    return reference_key


def _failure(name: str, engine: str, group: str, reason: str, reference: str, fp: dict) -> Figure:
    return Figure(name, engine, group, "failed", status="failed", reason=reason,
                  conditions={"compared_with": reference}, fingerprint=fp)


def _failed(run: "Run", group: str, reason: str) -> Figure:
    return _failure(run.target.name, run.target.engine.name, group, reason, run.reference_name, run.fp)


def _record_failure(store, name, engine, groups, cfg, inputs, fp, reason, reference) -> None:
    for g in groups:
        key = measurement_key(name, engine, {}, g, group_conditions(g, cfg, inputs), fp)
        store.put(key, [_failure(name, engine, g, reason, reference, fp)])


def engine_settings(name: str, cfg: CompareConfig, extra: dict | None) -> dict:
    """Same context and log-prob settings for every variant of an engine."""
    target_fmt = loader.locate(name)[2]
    # 2048 holds GSM8K's 5-shot prompts (~1.1k tokens) plus 256 generated tokens
    ctx = max(cfg.window_len + 64, cfg.bench_input + cfg.bench_output, 2048)
    if target_fmt == "gguf":
        base = {"n_ctx": ctx}
    else:
        base = {"max_model_len": ctx, "max_logprobs": cfg.top_k}
    return {**base, **(extra or {})}
