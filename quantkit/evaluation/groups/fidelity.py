"""Fidelity: exact top-K + tail KL and llama-perplexity statistics of a model's next-token
distributions against the reference's and its own engine baseline's, on the same windows.

The reference (and each engine's full-precision baseline) stores its own per-position rows;
models are scored against exactly those (quantkit.evaluation.fidelity)."""

from __future__ import annotations

import json
from pathlib import Path

from quantkit import paths
from quantkit.atomic import write_text_atomic
from quantkit.errors import ConfigError
from quantkit.evaluation import fidelity
from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run, digest
from quantkit.execution.worker_client import WorkerClient
from quantkit.results.store import Figure, as_dict

# names the fidelity statistics in measurement keys: figures of an older estimator are never reused
FIDELITY_STATISTICS = "exact top-K + tail KL, llama-perplexity statistics (v2)"
MESSAGE_ENTRIES = 2 ** 21  # ids + log-probs per worker call: 16 MiB of arrays, bounded messages


class FidelityGroup(Group):
    name = "fidelity"
    needs = "worker"
    order = 10

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        return {"top_k": cfg.top_k, "window_len": cfg.window_len, "windows": cfg.windows,
                "score_from": fidelity.score_from(cfg.window_len), "inputs": digest(inputs.windows),
                "statistics": FIDELITY_STATISTICS}

    def relative_to(self, run: Run) -> dict:
        if run.role == "reference":
            return {}
        out = {"reference_rows": run.anchors.reference_key}
        if run.role == "variant":
            name, key, why = run.anchors.baseline(run.target.engine.name)
            out["baseline_rows"] = key if name is not None and rows_file(key).exists() else f"missing: {why}"
        return out

    def anchor(self, run: Run, key: str) -> None:
        if run.role in ("reference", "baseline"):
            run.anchors.baselines[run.target.engine.name] = (run.target.name, key)
        if run.role == "reference":
            run.anchors.reference_key, run.anchors.reference_engine = key, run.target.engine.name

    def is_done(self, run, store, key) -> bool:
        # a reference or baseline is measured again when the rows the others are scored against are gone
        return store.done(key) and (run.role == "variant" or rows_file(key).exists())

    def measure(self, run: Run) -> list[Figure]:
        return measure_fidelity(run)


def rows_file(fidelity_key: str) -> Path:
    """A baseline's own per-position rows (the reference's, or an engine baseline's), named by its
    fidelity measurement key (settings, engine versions, windows, K): models are scored against
    exactly those. npz of int32 ids and float32 log-probs: 8 bytes x K per scored position
    (K=4096: 537 MB for the default 16,384 positions; K=128: 17 MB)."""
    return paths.cache_dir() / "fidelity-rows" / f"{fidelity_key}.npz"


def save_rows(rows: fidelity.TopK, key: str, owner: str) -> None:
    """Write a baseline's rows and delete the file it replaces for the same model (a new key
    means the old rows will never be scored against again: every later compare measures the
    baseline first and scores against its newest rows)."""
    path = rows_file(key)
    rows.save(path)
    index_file = path.parent / "index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    old = index.get(owner)
    if old and old != key:
        rows_file(old).unlink(missing_ok=True)
    index[owner] = key
    write_text_atomic(index_file, json.dumps(index, indent=1, sort_keys=True))


def load_rows(key: str, whose: str) -> fidelity.TopK:
    path = rows_file(key)
    if not key or not path.exists():
        raise ConfigError(f"{whose} fidelity rows are not cached ({path})",
                          hint="compare measures the reference (and the engine baseline) first; re-run compare")
    return fidelity.TopK.load(path)


def _rows_owner(run: Run) -> str:
    """Whose rows a file holds: the model, its engine and the fidelity setup (so that quick and
    full passes keep their own files)."""
    setup = digest(FidelityGroup().conditions(run.cfg, run.inputs))
    return f"{run.target.name}|{run.target.engine.name}|{setup}"


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


def _figures(run: Run, prefix: str, r: fidelity.Fidelity, cond: dict) -> list[Figure]:
    """One figure per statistic; `prefix` names the baseline: "" the reference, "base_" the
    model's own engine baseline, "noise_" the reference against itself (the noise floor)."""
    cond = {**cond, "baseline_tail_mass_mean": r.base_tail_mass}

    def f(metric, value, unc=None, unit=None, n=r.n, extra=None, params=None):
        return run.fig("fidelity", prefix + metric, value, unc, n, unit, conditions={**cond, **(extra or {})},
                       params=params)

    paired = {"stderr": "paired over the same tokens"}
    figs = [f("kld_mean", r.kld_mean, r.kld_stderr, "nats"), f("kld_median", r.kld_median, None, "nats"),
            f("kld_p90", r.kld_p90, None, "nats"), f("kld_p99", r.kld_p99, None, "nats"),
            f("kld_max", r.kld_max, None, "nats"), f("top1_agreement", r.top1, r.top1_stderr),
            f("dp_mean", r.dp_mean, r.dp_stderr), f("dp_rms", r.dp_rms, r.dp_rms_stderr),
            f("ppl_ratio", r.ppl_ratio, r.ppl_ratio_stderr, extra=paired)]
    for b in r.by_confidence:
        if b["n"]:
            figs.append(f("kld_mean", b["kld_mean"], b["kld_stderr"], "nats", n=b["n"],
                          extra={"bucket": "baseline top-1 probability in [lo, hi)", "top1_agreement": b["top1"]},
                          params={"top1_p_lo": float(b["lo"]), "top1_p_hi": float(b["hi"])}))
    if not prefix:
        figs.append(f("ppl", r.ppl, r.ppl_stderr))
    return figs


def _relabel(figs: list[Figure], prefix: str, cond: dict) -> list[Figure]:
    """The same figures under another baseline's prefix (the baseline is the same model)."""
    return [Figure(**{**as_dict(f), "metric": prefix + f.metric, "conditions": {**f.conditions, **cond}})
            for f in figs if f.metric != "ppl"]


def measure_fidelity(run: Run) -> list[Figure]:
    cfg, inputs, engine, worker = run.cfg, run.inputs, run.target.engine.name, run.worker
    assert worker is not None, "fidelity needs the engine's worker"
    ref_engine = engine if run.role == "reference" else run.anchors.reference_engine
    cond = {"data": "lambada", "windows": len(inputs.windows), "window_len": cfg.window_len,
            "scored": "second half of each window", "score_from": fidelity.score_from(cfg.window_len),
            "top_k": cfg.top_k, "kl": "exact, over the baseline's top-K ids plus one tail bucket (a lower bound on "
                                      "the full-vocabulary KL)", "baseline": f"{run.reference_name} on {ref_engine}",
            "reference_rows": run.anchors.reference_key, "windows_per_call": windows_per_call(cfg)}
    if run.role == "reference":
        own = _score(worker, cfg, inputs.windows)
        save_rows(own, run.keys["fidelity"], _rows_owner(run))
        # noise floor: the same model, the same ids, another batch composition (one window per call)
        again = _score(worker, cfg, inputs.windows, own, per_call=1)
        figs = _figures(run, "", fidelity.summarize(own, own), {**cond, "by_construction": "zero"})
        figs += _relabel(figs, "base_", {"baseline": f"itself (the engine baseline of {engine})"})
        return figs + _figures(run, "noise_", fidelity.summarize(own, again),
                               {**cond, "baseline": "itself, scored one window per call", "windows_per_call": 1,
                                "floor": "noise: the same model re-scored with another batch composition"})
    ref = load_rows(run.anchors.reference_key, "the reference's")
    figs = _figures(run, "", fidelity.summarize(ref, _score(worker, cfg, inputs.windows, ref)), cond)
    if run.role == "baseline":  # its KLD from the reference is the engine floor
        for f in figs:
            f.conditions["role"] = f"engine baseline of {engine}"
        own = _score(worker, cfg, inputs.windows)
        save_rows(own, run.keys["fidelity"], _rows_owner(run))
        return figs + _figures(run, "base_", fidelity.summarize(own, own),
                               {**cond, "baseline": "itself", "by_construction": "zero",
                                "role": f"engine baseline of {engine}"})
    base_name, base_key, why = run.anchors.baseline(engine)
    if base_name is not None and base_key == run.anchors.reference_key:  # the reference is this engine's baseline (vLLM)
        return figs + _relabel(figs, "base_", {"baseline": f"{base_name} on {engine} (the reference itself)"})
    if base_name is None or not rows_file(base_key).exists():
        reason = why or f"the engine baseline's rows are missing ({base_name}); re-run compare with it"
        return figs + [run.failed("fidelity", reason, metric="base_kld_mean", conditions=cond)]
    base = load_rows(base_key, f"{base_name}'s")
    bcond = {**cond, "baseline": f"{base_name} on {engine}", "baseline_rows": base_key}
    return figs + _figures(run, "base_", fidelity.summarize(base, _score(worker, cfg, inputs.windows, base)), bcond)
