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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console

from quantkit import evaldata, hardware, loader, paths, prompts, sources, variants
from quantkit.atomic import write_text_atomic
from quantkit.builders.common import env_versions
from quantkit.envs.specs import ENGINE_NAMES
from quantkit.errors import ConfigError, QuantkitError
from quantkit.evaluation import fidelity, stats
from quantkit.evaluation.memory import memory_figures
from quantkit.evaluation.serving import requests_needed
from quantkit.evaluation.stats import median_spread
from quantkit.execution.local import LocalExecutor
from quantkit.execution.worker_client import WorkerClient
from quantkit.results.store import Figure, Store, as_dict, measurement_key

# memory last, so that peak memory includes the work done before it; serving needs the engine's
# HTTP server, so it runs after the worker is closed (a second start of the same engine)
GROUPS = ("fidelity", "probes", "tasks", "speed", "memory")
# names the fidelity statistics in measurement keys: figures of an older estimator are never reused
FIDELITY_STATISTICS = "exact top-K + tail KL, llama-perplexity statistics (v2)"
SERVER_GROUPS = ("serving",)


@dataclass
class CompareConfig:
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    quick: bool = False
    force: bool = False
    # fidelity: the baseline's top-K ids per position; KL is exact over them plus a tail bucket, a
    # lower bound that misses the KL inside the tail. SmolLM2-135M is diffuse on LAMBADA (top-128
    # holds ~90% of the mass): K=128 gives ~0.85 of the full KL, K=4096 0.99 (README, fidelity.py)
    top_k: int = 4096
    window_len: int = 512
    windows: int = 64  # 64 x 512, second halves scored: 16,384 positions
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
    def make(cls, quick: bool, **kw) -> CompareConfig:
        base = {"window_len": 256, "windows": 4, "bench_batch": 4, "bench_input": 64, "bench_output": 32,
                "bench_repeats": 3, "serving_levels": (1, 4), "serving_output": 32, "serving_repeats": 2,
                "sweep_samples": 4, "sweep_problems": 10} if quick else {}
        return cls(quick=quick, **{**base, **{k: v for k, v in kw.items() if v is not None}})

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"fidelity top_k must be a positive whole number of token ids, not {self.top_k!r}",
                              hint="the default is 4096 (within ~1% of the full KL on the embedded model)")
        if self.window_len < 4 or self.windows < 1:
            raise ConfigError(f"fidelity windows must be at least 1 x 4 tokens, not {self.windows} x {self.window_len}")


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


def _rows_file(fidelity_key: str) -> Path:
    """A baseline's own per-position rows (the reference's, or an engine baseline's), named by its
    fidelity measurement key (settings, engine versions, windows, K): models are scored against
    exactly those. npz of int32 ids and float32 log-probs: 8 bytes x K per scored position
    (K=4096: 537 MB for the default 16,384 positions; K=128: 17 MB)."""
    return paths.cache_dir() / "fidelity-rows" / f"{fidelity_key}.npz"


def _save_rows(rows: fidelity.TopK, key: str, owner: str) -> None:
    """Write a baseline's rows and delete the file it replaces for the same model (a new key
    means the old rows will never be scored against again: every later compare measures the
    baseline first and scores against its newest rows)."""
    path = _rows_file(key)
    rows.save(path)
    index_file = path.parent / "index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    old = index.get(owner)
    if old and old != key:
        _rows_file(old).unlink(missing_ok=True)
    index[owner] = key
    write_text_atomic(index_file, json.dumps(index, indent=1, sort_keys=True))


def _rows_owner(ctx: Run) -> str:
    """Whose rows a file holds: the model, its engine and the fidelity setup (so that quick and
    full passes keep their own files)."""
    setup = digest(group_conditions("fidelity", ctx.cfg, ctx.inputs))
    return f"{ctx.target.name}|{ctx.target.engine.name}|{setup}"


MESSAGE_ENTRIES = 2 ** 21  # ids + log-probs per worker call: 16 MiB of arrays, bounded messages


def windows_per_call(cfg: CompareConfig) -> int:
    """Windows sent per topk_logprobs call: as many as keep a message bounded, at least 2 (the
    noise floor re-scores one window per call, so the two passes batch differently), at most 16."""
    positions = cfg.window_len - fidelity.score_from(cfg.window_len)
    return max(2, min(16, MESSAGE_ENTRIES // (positions * cfg.top_k)))


def _score(worker: WorkerClient, cfg: CompareConfig, windows: list[list[int]], base: fidelity.TopK | None = None,
           per_call: int | None = None) -> fidelity.TopK:
    """The engine's fidelity rows over every window's second half: its own top-K (no `base`), or
    the log-probs of `base`'s ids."""
    start = fidelity.score_from(cfg.window_len)
    per_call = per_call or windows_per_call(cfg)
    parts = []
    for i in range(0, len(windows), per_call):
        answers = worker.call("topk_logprobs", sequences=windows[i:i + per_call], score_from=start, top_k=cfg.top_k,
                              ref_ids=base.window_ids(i, i + per_call) if base is not None else None)
        parts.append(fidelity.TopK.from_answers(answers))
    return fidelity.TopK.concat(parts)


def _fidelity_figures(ctx: Run, prefix: str, r: fidelity.Fidelity, cond: dict) -> list[Figure]:
    """One figure per statistic; `prefix` names the baseline: "" the reference, "base_" the
    model's own engine baseline, "noise_" the reference against itself (the noise floor)."""
    cond = {**cond, "baseline_tail_mass_mean": r.base_tail_mass}

    def f(metric, value, unc=None, unit=None, n=r.n, extra=None):
        return ctx.fig("fidelity", prefix + metric, value, unc, n, unit, conditions={**cond, **(extra or {})})

    paired = {"stderr": "paired over the same tokens"}
    figs = [f("kld_mean", r.kld_mean, r.kld_stderr, "nats"), f("kld_median", r.kld_median, None, "nats"),
            f("kld_p90", r.kld_p90, None, "nats"), f("kld_p99", r.kld_p99, None, "nats"),
            f("kld_max", r.kld_max, None, "nats"), f("top1_agreement", r.top1, r.top1_stderr),
            f("dp_mean", r.dp_mean, r.dp_stderr), f("dp_rms", r.dp_rms, r.dp_rms_stderr),
            f("ppl_ratio", r.ppl_ratio, r.ppl_ratio_stderr, extra=paired)]
    for b in r.by_confidence:
        if b["n"]:
            figs.append(f(f"kld_mean@conf={b['lo']:g}-{b['hi']:g}", b["kld_mean"], b["kld_stderr"], "nats", n=b["n"],
                          extra={"bucket": "baseline top-1 probability in [lo, hi)", "top1_agreement": b["top1"]}))
    if not prefix:
        figs.append(f("ppl", r.ppl, r.ppl_stderr))
    return figs


def _relabel(figs: list[Figure], prefix: str, cond: dict) -> list[Figure]:
    """The same figures under another baseline's prefix (the baseline is the same model)."""
    return [Figure(**{**as_dict(f), "metric": prefix + f.metric, "conditions": {**f.conditions, **cond}})
            for f in figs if f.metric != "ppl"]


def measure_fidelity(ctx: Run) -> list[Figure]:
    cfg, inputs, engine = ctx.cfg, ctx.inputs, ctx.target.engine.name
    cond = {"data": "lambada", "windows": len(inputs.windows), "window_len": cfg.window_len,
            "scored": "second half of each window", "score_from": fidelity.score_from(cfg.window_len),
            "top_k": cfg.top_k, "kl": "exact, over the baseline's top-K ids plus one tail bucket (a lower bound on "
                                      "the full-vocabulary KL)", "baseline": f"{ctx.reference_name} on vllm",
            "reference_rows": ctx.anchors.reference_key, "windows_per_call": windows_per_call(cfg)}
    if ctx.role == "reference":
        own = _score(ctx.worker, cfg, inputs.windows)
        _save_rows(own, ctx.keys["fidelity"], _rows_owner(ctx))
        # noise floor: the same model, the same ids, another batch composition (one window per call)
        again = _score(ctx.worker, cfg, inputs.windows, own, per_call=1)
        figs = _fidelity_figures(ctx, "", fidelity.summarize(own, own), {**cond, "by_construction": "zero"})
        figs += _relabel(figs, "base_", {"baseline": "itself (the engine baseline of vllm)"})
        return figs + _fidelity_figures(ctx, "noise_", fidelity.summarize(own, again),
                                        {**cond, "baseline": "itself, scored one window per call",
                                         "windows_per_call": 1,
                                         "floor": "noise: the same model re-scored with another batch composition"})
    ref = _load_rows(ctx.anchors.reference_key, "the reference's")
    figs = _fidelity_figures(ctx, "", fidelity.summarize(ref, _score(ctx.worker, cfg, inputs.windows, ref)), cond)
    if ctx.role == "baseline":  # its KLD from the reference is the engine floor
        for f in figs:
            f.conditions["role"] = f"engine baseline of {engine}"
        own = _score(ctx.worker, cfg, inputs.windows)
        _save_rows(own, ctx.keys["fidelity"], _rows_owner(ctx))
        return figs + _fidelity_figures(ctx, "base_", fidelity.summarize(own, own),
                                        {**cond, "baseline": "itself", "by_construction": "zero",
                                         "role": f"engine baseline of {engine}"})
    base_name, base_key, why = ctx.anchors.baseline(engine)
    if base_name is not None and base_key == ctx.anchors.reference_key:  # vLLM: the reference is the baseline
        return figs + _relabel(figs, "base_", {"baseline": f"{base_name} on {engine} (the reference itself)"})
    if base_name is None or not _rows_file(base_key).exists():
        reason = why or f"the engine baseline's rows are missing ({base_name}); re-run compare with it"
        return figs + [Figure(ctx.target.name, engine, "fidelity", "base_kld_mean", status="failed", reason=reason,
                              settings=ctx.settings, conditions=dict(cond), fingerprint=ctx.fp)]
    base = _load_rows(base_key, f"{base_name}'s")
    bcond = {**cond, "baseline": f"{base_name} on {engine}", "baseline_rows": base_key}
    return figs + _fidelity_figures(ctx, "base_", fidelity.summarize(base, _score(ctx.worker, cfg, inputs.windows,
                                                                                   base)), bcond)


def _load_rows(key: str, whose: str) -> fidelity.TopK:
    path = _rows_file(key)
    if not key or not path.exists():
        raise ConfigError(f"{whose} fidelity rows are not cached ({path})",
                          hint="compare measures the reference (and the engine baseline) first; re-run compare")
    return fidelity.TopK.load(path)


def measure_probes(ctx: Run) -> list[Figure]:
    outs = ctx.worker.call("generate", prompts=ctx.inputs.probe_ids, temperature=0.0,
                           max_tokens=ctx.inputs.probe_max_tokens, seed=0)
    cond = {"sampling": "greedy", "max_tokens": ctx.inputs.probe_max_tokens, "chat_template": "reference tokenizer"}
    return [ctx.fig("probes", f"probe:{p['id']}", None, None, 1, text=o[0]["text"], conditions={**cond, "prompt": p["prompt"]})
            for p, o in zip(ctx.inputs.probes, outs)]


def measure_speed(ctx: Run) -> list[Figure]:
    cfg = ctx.cfg
    res = ctx.worker.call("bench", prompts=ctx.inputs.bench_prompts, max_tokens=cfg.bench_output,
                          repeats=cfg.bench_repeats)
    rates = [r["output_tokens"] / r["seconds"] for r in res["runs"]]
    med, lo, hi, p90 = median_spread(rates)
    cond = {"batch": cfg.bench_batch, "input_tokens": cfg.bench_input, "output_tokens": cfg.bench_output,
            "repeats": cfg.bench_repeats, "spread": [lo, hi], "p90": p90, "greedy": True, "ignore_eos": True,
            "prefix_cache": "cleared before each run (every run pays its prefill)",
            "batching": res.get("method", "one batch (vLLM)")}
    return [ctx.fig("speed", "offline_tokens_per_s", med, (hi - lo) / 2, cfg.bench_repeats, "tok/s", conditions=cond)]


def measure_memory(ctx: Run) -> list[Figure]:
    figs = memory_figures(ctx)
    for f in figs:  # the peak depends on what this engine process did before (resume may skip groups)
        f.conditions["peak_after_groups"] = list(ctx.history)
    return figs


def measure_tasks(ctx: Run) -> list[Figure]:
    from quantkit.evaluation.scorer import WorkerScorer
    from quantkit.evaluation.tasks import run_tasks

    results = run_tasks(WorkerScorer(ctx.worker, ctx.inputs.reference_dir), ctx.cfg.tasks, limit=ctx.cfg.limit)
    figs = []
    for r in results:
        group, metric = f"task:{r['task']}", r["metric"]
        cond = {"lm_eval": r["lm_eval_version"], "num_fewshot": r["num_fewshot"], "limit": ctx.cfg.limit}
        figs += [ctx.fig(group, metric, r["value"], r["stderr"], r["n"], conditions=cond),
                 # per question, so that any two models can be compared question by question
                 ctx.fig(group, f"{metric}:per_doc", None, None, len(r["per_doc"]),
                         text=json.dumps(r["per_doc"], sort_keys=True), conditions=cond)]
        ref_docs = ctx.anchors.task_docs.get((group, metric))
        flip = stats.flips(ref_docs, r["per_doc"]) if ctx.role != "reference" and ref_docs else None
        if flip:
            fcond = {**cond, "paired_with": ctx.reference_name, "reference_tasks": ctx.anchors.reference_tasks_key,
                     "test": "exact McNemar (two-sided binomial on the discordant questions)"}
            figs += [ctx.fig(group, f"{metric}:lost", flip["lost"], None, flip["n"], "questions",
                             conditions={**fcond, "meaning": "right for the reference, wrong here"}),
                     ctx.fig(group, f"{metric}:gained", flip["gained"], None, flip["n"], "questions",
                             conditions={**fcond, "meaning": "wrong for the reference, right here"}),
                     ctx.fig(group, f"{metric}:mcnemar_p", flip["p"], None, flip["n"], conditions=fcond)]
    return figs


def measure_serving(ctx: Run) -> list[Figure]:
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


def _roofline(ctx: Run, single: dict) -> list[Figure]:
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
    check_fraction_of_bound(decode, bound)
    cond = {"bandwidth": f"numpy copy, {threads} threads (GB/s, read+write), best of 5", "bandwidth_gbs": bw,
            "bytes_per_token": weights + kv * context, "weights_bytes": weights, "context": context,
            "decode_rate": "1 / median inter-token latency at concurrency 1"}
    return [ctx.fig("roofline", "decode_tokens_per_s", decode, None, single["requests"], "tok/s", conditions=cond),
            ctx.fig("roofline", "bound_tokens_per_s", bound, None, 1, "tok/s", conditions=cond),
            ctx.fig("roofline", "fraction_of_bound", decode / bound, None, 1, conditions=cond)]


def check_fraction_of_bound(decode: float, bound: float) -> float:
    """A decode rate above the memory-bandwidth bound is physically impossible for a dense model:
    the measurement (latency, bytes or bandwidth) is broken, and is recorded as a failure with this
    reason, never as a figure."""
    if not (bound > 0 and decode > 0):
        raise QuantkitError(f"roofline not computed: decode rate {decode:.3g} tok/s, bound {bound:.3g} tok/s")
    fraction = decode / bound
    if fraction > 1.0:
        raise QuantkitError(f"broken measurement: the decode rate {decode:.1f} tok/s is {fraction:.2f}x the memory-"
                            f"bandwidth bound {bound:.1f} tok/s (above 1 is impossible; check the serving ITL)")
    return fraction


def measure_sweep(ctx: Run) -> list[Figure]:
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


def _weights_bytes(ctx: Run) -> float:
    from quantkit import safetensors_info

    if ctx.is_reference:
        return float(safetensors_info.tensor_bytes(ctx.target.model_path))
    return float(variants.get(ctx.target.name).manifest.get("weights_bytes") or 0)


MEASURES: dict[str, Callable[[Run], list[Figure]]] = {
    "serving": measure_serving,
    "sweep": measure_sweep,
    "memory": measure_memory, "fidelity": measure_fidelity, "probes": measure_probes,
    "tasks": measure_tasks, "speed": measure_speed,
}


@dataclass
class Anchors:
    """What the models of one reference are scored against, filled in as compare goes (the
    reference first, then each engine's full-precision baseline, then the variants)."""

    reference: str
    reference_key: str = ""  # the reference's fidelity key: names its rows file
    reference_tasks_key: str = ""
    task_docs: dict = field(default_factory=dict)  # (task group, metric) -> the reference's {doc_id: value}
    baselines: dict[str, tuple[str, str]] = field(default_factory=dict)  # engine -> (model, its fidelity key)
    missing: dict[str, str] = field(default_factory=dict)  # engine -> why it has no baseline

    def baseline(self, engine: str) -> tuple[str | None, str, str]:
        """(baseline model, its fidelity key, "") or (None, "", why there is none)."""
        if engine in self.baselines:
            return (*self.baselines[engine], "")
        return None, "", self.missing.get(engine, f"no full-precision baseline is defined for {engine}")


@dataclass
class Run:
    """One model on one engine: what a measurement needs."""

    target: loader.Target
    worker: WorkerClient | None
    inputs: Inputs
    cfg: CompareConfig
    fp: dict
    role: str  # "reference" | "baseline" (an engine's full-precision baseline) | "variant"
    reference_name: str = "reference"
    anchors: Anchors = field(default_factory=lambda: Anchors("reference"))
    keys: dict[str, str] = field(default_factory=dict)  # group -> measurement key
    history: list[str] = field(default_factory=list)  # groups this engine process ran, in order

    @property
    def is_reference(self) -> bool:
        return self.role == "reference"

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
                "score_from": fidelity.score_from(cfg.window_len), "inputs": digest(inputs.windows),
                "statistics": FIDELITY_STATISTICS}
    if group == "probes":
        return {"inputs": digest([inputs.probe_ids, inputs.probe_max_tokens])}
    if group == "speed":
        return {**{k: getattr(cfg, k) for k in ("bench_batch", "bench_input", "bench_output", "bench_repeats")},
                "inputs": digest(inputs.bench_prompts), "prefix_cache": "cleared before each run"}
    if group == "tasks":
        from quantkit.evaluation.tasks import lm_eval_version

        files = sorted((paths.evals_dir() / "tasks").glob("*.yaml")) + [evaldata.definitions_file()]
        return {"tasks": sorted(cfg.tasks), "limit": cfg.limit, "lm_eval": lm_eval_version(),
                "configs": digest({f.name: f.read_text() for f in files}), "per_doc": True}
    if group == "sweep":
        return {"temperatures": list(cfg.temperatures), "top_p": cfg.top_p, "samples": cfg.sweep_samples,
                "problems": cfg.sweep_problems, "seed": cfg.seed,
                "configs": digest((paths.evals_dir() / "tasks" / "qk_gsm8k.yaml").read_text())}
    if group == "serving":
        return {"levels": list(cfg.serving_levels), "output": cfg.serving_output, "repeats": cfg.serving_repeats,
                "input": cfg.bench_input, "inputs": digest(inputs.serving_prompts)}
    return {}


def _key(target: loader.Target, settings: dict, group: str, conditions: dict, fp: dict, extra: dict | None = None) -> str:
    """`extra`: what the figures are relative to (the baseline rows or reference answers they are
    scored against), so that a re-measured baseline re-measures what depends on it."""
    cond = {**conditions, "model": model_identity(target.name), **(extra or {})}
    return measurement_key(target.name, target.engine.name, settings, group, cond, fp)


def _relative_to(group: str, role: str, engine: str, anchors: Anchors) -> dict:
    if role == "reference":
        return {}
    if group == "fidelity":
        out = {"reference_rows": anchors.reference_key}
        if role == "variant":
            name, key, why = anchors.baseline(engine)
            out["baseline_rows"] = key if name is not None and _rows_file(key).exists() else f"missing: {why}"
        return out
    if group == "tasks":
        return {"reference_tasks": anchors.reference_tasks_key}
    return {}


def _run_group(store: Store, key: str, run: Run, group: str, setup: str, console: Console) -> None:
    """Measure one group and store it; any failure is stored with its reason (the others go on),
    except a dead engine, which the caller handles. `setup` digests the group's conditions."""
    t0 = time.time()
    try:
        figs = MEASURES[group](run)
    except Exception as e:
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
        anchors = Anchors(reference)
        _measure_model(store, reference, "reference", anchors, inputs, groups, cfg, fp, console, settings)
        ordered, baselines = with_engine_baselines(reference, members, anchors, console)
        for name in ordered:
            _measure_model(store, name, "baseline" if name in baselines else "variant", anchors, inputs, groups, cfg,
                           fp, console, settings)
    return store


# An engine's full-precision baseline: the reference in that engine's own format, unquantized, so
# that a variant's divergence from it is quantization alone and its own divergence from the
# reference is the engine's arithmetic (the engine floor). vLLM runs the reference itself.
ENGINE_BASELINE_RECIPES = {"llamacpp": "smollm2_gguf_f16.yaml"}


def _engine_of(name: str) -> str | None:
    try:
        return loader.default_engine(loader.locate(name)[2]).name
    except QuantkitError:
        return None  # measured (and its load failure recorded) like any other member


def with_engine_baselines(reference: str, members: list[str], anchors: Anchors,
                          console: Console) -> tuple[list[str], set[str]]:
    """Members in measuring order, each engine's baseline (built when missing) before the
    variants it anchors; returns (order, baseline names)."""
    engines = {e for m in members if (e := _engine_of(m)) in ENGINE_BASELINE_RECIPES}
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

    spec = sources.reference_spec(reference)
    overrides = [] if reference == "reference" else [
        f"source={spec}", f"name={re.sub(r'[^A-Za-z0-9._-]+', '-', spec).strip('-.')}-gguf-f16"]
    recipe = load_recipe(paths.recipes_dir() / ENGINE_BASELINE_RECIPES[engine], overrides)
    try:
        variant, _ = builders.build(recipe, console=console)
    except QuantkitError:
        raise
    except Exception as e:
        raise QuantkitError(f"{type(e).__name__}: {e}") from e
    return variant.name


def _measure_model(store: Store, name: str, role: str, anchors: Anchors, inputs: Inputs, groups: list[str],
                   cfg: CompareConfig, fp: dict, console: Console, settings: dict | None) -> None:
    """Every pending group of one model; a reference or baseline records itself in `anchors`."""
    reference = anchors.reference
    try:
        target = loader.load(name, settings=engine_settings(name, cfg, settings))
    except QuantkitError as e:
        engine = _engine_of(name) or "?"
        if role == "baseline":
            anchors.missing[engine] = f"its full-precision baseline {name} cannot load: {e.args[0]}"
        _record_failure(store, name, engine, [*SERVER_GROUPS, *groups], cfg, inputs, fp,
                        f"cannot load: {e.args[0]}", reference)
        console.print(f"[red]{name}: cannot load[/] ({e.args[0]})")
        return
    engine = target.engine.name
    run = Run(target, None, inputs, cfg, fp, role, reference, anchors)
    conds = {g: group_conditions(g, cfg, inputs) for g in (*groups, *SERVER_GROUPS)}
    keyed = {g: _key(target, run.settings, g, conds[g], fp, _relative_to(g, role, engine, anchors)) for g in conds}
    run.keys = keyed
    if role in ("reference", "baseline"):
        anchors.baselines[engine] = (name, keyed["fidelity"])
    if role == "reference":
        anchors.reference_key = keyed["fidelity"]
        anchors.reference_tasks_key = keyed.get("tasks", "")
    pending = [g for g in groups if cfg.force or not store.done(keyed[g])
               or (g == "fidelity" and role != "variant" and not _rows_file(keyed[g]).exists())]
    server_pending = [g for g in SERVER_GROUPS if cfg.force or not store.done(keyed[g])]
    if not pending and not server_pending:
        console.print(f"{name}: every figure already measured (use --force to re-measure)")
    else:
        console.print(f"[bold]{name}[/] on {engine}: {', '.join(server_pending + pending)}")
        for g in server_pending:  # engine's HTTP server first: the worker below holds the memory otherwise
            _run_group(store, keyed[g], run, g, digest(conds[g]), console)
        if pending:
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
    if role == "reference" and "tasks" in keyed:
        anchors.task_docs = task_docs(store.get(keyed["tasks"]))


def task_docs(figs: list[Figure]) -> dict[tuple[str, str], dict[str, float]]:
    """{(task group, metric): {doc_id: value}} from a tasks measurement's per-document figures."""
    return {(f.group, f.metric.removesuffix(":per_doc")): json.loads(f.text)
            for f in figs if f.metric.endswith(":per_doc") and f.status == "ok" and f.text}


def _failure(name: str, engine: str, group: str, reason: str, reference: str, fp: dict) -> Figure:
    return Figure(name, engine, group, "failed", status="failed", reason=reason,
                  conditions={"compared_with": reference}, fingerprint=fp)


def _failed(run: Run, group: str, reason: str) -> Figure:
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
        # the `logprobs` op (lm-eval's scorer) asks for the top-1; fidelity's topk_logprobs takes
        # K ids through its own path, so vLLM's prompt log-prob limit does not depend on K
        base = {"max_model_len": ctx, "max_logprobs": 20}
    return {**base, **(extra or {})}
