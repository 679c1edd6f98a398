"""Offline speed: a batch of fixed prompts decoded to a fixed length, repeated, median tok/s."""

from __future__ import annotations

from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run, digest
from quantkit.evaluation.stats import median_spread
from quantkit.results.store import Figure

BENCH_FIELDS = ("bench_batch", "bench_input", "bench_output", "bench_repeats")


class SpeedGroup(Group):
    name = "speed"
    needs = "worker"
    order = 50

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        return {**{k: getattr(cfg, k) for k in BENCH_FIELDS}, "inputs": digest(inputs.bench_prompts),
                "prefix_cache": "cleared before each run"}

    def measure(self, run: Run) -> list[Figure]:
        cfg = run.cfg
        assert run.worker is not None, "speed needs the engine's worker"
        res = run.worker.call("bench", prompts=run.inputs.bench_prompts, max_tokens=cfg.bench_output,
                              repeats=cfg.bench_repeats)
        rates = [r["output_tokens"] / r["seconds"] for r in res["runs"]]
        med, lo, hi, p90 = median_spread(rates)
        cond = {"batch": cfg.bench_batch, "input_tokens": cfg.bench_input, "output_tokens": cfg.bench_output,
                "repeats": cfg.bench_repeats, "spread": [lo, hi], "p90": p90, "greedy": True, "ignore_eos": True,
                "prefix_cache": "cleared before each run (every run pays its prefill)",
                "batching": res.get("method", f"one batch ({run.target.engine.display_name})")}
        return [run.fig("speed", "offline_tokens_per_s", med, (hi - lo) / 2, cfg.bench_repeats, "tok/s",
                        conditions=cond)]
