"""Serving: a concurrency sweep against the engine's own OpenAI server (the server users deploy),
then the decode roofline: the single-stream decode rate against the memory-bandwidth bound."""

from __future__ import annotations

import json

from quantkit import hardware, safetensors_info, variants
from quantkit.errors import QuantkitError
from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run, WorkerServed, digest
from quantkit.results.store import Figure

# how the roofline's decode rate is computed; in the serving key, so that rooflines computed
# another way (from the per-event ITL, before) are measured again rather than reused
ROOFLINE_DECODE = "1 / median time per output token (TPOT) at concurrency 1"


class ServingGroup(Group):
    name = "serving"
    needs = "server"
    order = 0

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        return {"levels": list(cfg.serving_levels), "output": cfg.serving_output, "repeats": cfg.serving_repeats,
                "input": cfg.bench_input, "inputs": digest(inputs.serving_prompts),
                "roofline_decode": ROOFLINE_DECODE}

    def measure(self, run: Run) -> list[Figure]:
        from quantkit.evaluation.serving import sweep

        cfg, server = run.cfg, run.server
        assert server is not None, "serving needs the engine's OpenAI server"
        levels = sweep(server.url, server.model_name, run.inputs.serving_prompts, list(cfg.serving_levels),
                       cfg.serving_output, cfg.serving_repeats)
        figs = []
        for lv in levels:
            c = lv["concurrency"]
            cond = {"concurrency": c, "requests": lv["requests"], "repeats": lv["repeats"],
                    "input_tokens": cfg.bench_input, "distinct_prompts": len(run.inputs.serving_prompts),
                    "output_tokens": cfg.serving_output, "server": run.target.engine.name + " OpenAI server" + (
                        " (served by quantkit's worker from the engine the offline groups use)"
                        if isinstance(server, WorkerServed) else ""),
                    "ignore_eos": True, "greedy": True, "spread_tokens_per_s": lv["output_tokens_per_s_spread"],
                    "spread_requests_per_s": lv["requests_per_s_spread"]}
            figs += level_figures(run, self.name, lv, cond, {"concurrency": c})
        single = next((lv for lv in levels if lv["concurrency"] == 1), None)
        if single:
            try:  # a roofline that cannot be computed is a failed roofline, not a lost serving sweep
                figs += roofline(run, single)
            except Exception as e:  # noqa: BLE001 - recorded with its reason
                figs.append(run.failed("roofline", str(e) or type(e).__name__))
        return figs


LEVEL_METRICS = ("ttft_median_ms", "ttft_p90_ms", "itl_median_ms", "itl_p90_ms", "output_tokens_per_s",
                 "requests_per_s")


def level_figures(run: Run, group: str, lv: dict, cond: dict, at: dict,
                  metrics: tuple[str, ...] = LEVEL_METRICS) -> list[Figure]:
    """One concurrency level of a serving sweep (quantkit.evaluation.serving.sweep) as figures of
    `group`: latencies over every request of every repeat (n = requests x repeats), throughputs
    over the repeats (tok/s with half its spread as the uncertainty). Shared by the serving sweep
    and the replica sweep."""
    n = lv["requests"] * lv["repeats"]
    lo, hi = lv["output_tokens_per_s_spread"]
    each = {"ttft_median_ms": (lv["ttft_median_s"] * 1e3, None, n, "ms"),
            "ttft_p90_ms": (lv["ttft_p90_s"] * 1e3, None, n, "ms"),
            "itl_median_ms": (lv["itl_median_s"] * 1e3, None, n, "ms"),
            "itl_p90_ms": (lv["itl_p90_s"] * 1e3, None, n, "ms"),
            "output_tokens_per_s": (lv["output_tokens_per_s"], (hi - lo) / 2, lv["repeats"], "tok/s"),
            "requests_per_s": (lv["requests_per_s"], None, lv["repeats"], "req/s")}
    return [run.fig(group, m, *each[m], conditions=cond, params=at) for m in metrics]


def roofline(run: Run, single: dict) -> list[Figure]:
    """Decode rate at concurrency 1 (1 / median TPOT) against the memory-bandwidth bound; a
    fraction above 1 raises (quantkit.evaluation.roofline.fraction_of_bound)."""
    from quantkit.evaluation.memory import kv_bytes_per_token
    from quantkit.evaluation.roofline import (
        bound_tokens_per_s,
        fraction_of_bound,
        measure_bandwidth_gbs,
    )

    cfg = run.cfg
    if hardware.detect().has_cuda:
        raise QuantkitError("not computed on a GPU machine: quantkit measures host-memory copy bandwidth, "
                            "which does not bound a GPU's decode (device bandwidth is not measured yet)")
    tpot = single.get("tpot_median_s")
    if not tpot:
        raise QuantkitError("no time per output token at concurrency 1 (no request produced two tokens or more)")
    config = json.loads((run.inputs.reference_dir / "config.json").read_text())
    weights = weights_bytes(run)
    if not weights:
        raise QuantkitError("the variant's manifest records no weight size")
    kv = kv_bytes_per_token(config, run.target.kv_cache_type) or 0.0
    bw, threads = measure_bandwidth_gbs()
    context = cfg.bench_input + cfg.serving_output // 2
    bound = bound_tokens_per_s(bw, weights, kv, context)
    decode = 1.0 / tpot
    fraction = fraction_of_bound(decode, bound)
    cond = {"bandwidth": f"numpy copy, {threads} threads (GB/s, read+write), best of 5", "bandwidth_gbs": bw,
            "bytes_per_token": weights + kv * context, "weights_bytes": weights, "context": context,
            "decode_rate": ROOFLINE_DECODE, "tpot_median_ms": tpot * 1e3}
    return [run.fig("roofline", "decode_tokens_per_s", decode, None, single["requests"], "tok/s", conditions=cond),
            run.fig("roofline", "bound_tokens_per_s", bound, None, 1, "tok/s", conditions=cond),
            run.fig("roofline", "fraction_of_bound", fraction, None, 1, conditions=cond)]


def weights_bytes(run: Run) -> float:
    if run.is_reference:
        return float(safetensors_info.tensor_bytes(run.target.model_path))
    return float(variants.get(run.target.name).manifest.get("weights_bytes") or 0)
