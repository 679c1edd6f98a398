"""Memory: on disk, bits per weight, weights once loaded, KV cache per token and capacity, peak.

KV bytes per token are computed from the architecture (quantkit.evaluation.memory); capacities and
loaded weights are what each engine reports (Engine.memory_figures: from its worker's answer and log).
Measured last in its engine process, so that the peak includes the other groups' work."""

from __future__ import annotations

import json

from quantkit import safetensors_info, variants
from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run
from quantkit.evaluation.memory import gpu_memory_mib, kv_bytes_per_token
from quantkit.results.store import Figure


class MemoryGroup(Group):
    name = "memory"
    needs = "worker"
    order = 1000  # last: the peak includes what ran before it in the same engine process

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        return {}  # the model, its settings and the versions are the whole key

    def measure(self, run: Run) -> list[Figure]:
        figs = memory_figures(run)
        for f in figs:  # the peak depends on what this engine process did before (resume may skip groups)
            f.conditions["peak_after_groups"] = list(run.history)
        return figs


def memory_figures(run: Run) -> list[Figure]:
    t = run.target
    assert run.worker is not None, "memory needs the engine's worker"
    config = json.loads((run.inputs.reference_dir / "config.json").read_text())
    mem = run.worker.call("memory")
    disk: float | None
    bpw: float | None
    if run.is_reference:
        disk = safetensors_info.tensor_bytes(t.model_path)
        bpw = 8 * disk / safetensors_info.parameter_count(t.model_path)
    else:
        m = variants.get(t.name).manifest
        disk, bpw = m.get("weights_bytes"), m.get("bits_per_weight")
    engine = t.engine.memory_figures(mem, run.worker.log_path.read_text(errors="replace"))
    weights = engine.weights_loaded_bytes
    kv_tok = kv_bytes_per_token(config, t.kv_cache_type)
    gpu = gpu_memory_mib(list(engine.pids))
    cond = {"kv_cache_type": t.kv_cache_type, "kv_bytes_per_token": "computed from the architecture",
            "kv_capacity": engine.kv_capacity_source}

    def f(metric, value, unit):
        return run.fig("memory", metric, value, None, 1, unit, conditions=dict(cond))

    figs = [f("weights_on_disk_mib", disk / 2**20 if disk else None, "MiB"), f("bits_per_weight", bpw, "bits"),
            f("weights_loaded_mib", weights / 2**20 if weights else None, "MiB"),
            f("kv_bytes_per_token", kv_tok, "B"), f("kv_capacity_tokens", engine.kv_capacity_tokens, "tokens"),
            f("peak_rss_mib", engine.peak_rss_bytes / 2**20, "MiB")]
    if gpu is not None:
        figs.append(f("gpu_memory_mib", gpu, "MiB"))
    return figs
