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
from quantkit.evaluation.groups.scaling import layouts
from quantkit.recipes import load_recipe
from quantkit.results import leaderboard
from quantkit.results.store import Store

Q8 = "smollm2-gguf-q8_0"


def test_layouts_split_the_cores_into_equal_shares():
    assert layouts([0, 1], 2) == [("1x1", [[0]]), ("2x1", [[0], [1]]), ("1x2", [[0, 1]])]
    assert layouts([0, 1, 2, 3, 4], 2) == [("1x2", [[0, 1]]), ("2x2", [[0, 1], [2, 3]]), ("1x4", [[0, 1, 2, 3]])]
    with pytest.raises(Exception, match="need at least 4 cores"):
        layouts([0, 1], 4)


def test_replica_sweep_on_two_cores_fills_the_scaling_table(reference, tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip(f"the replica sweep needs two cores; this process may use {len(cores)}")
    builders.build(load_recipe(paths.recipes_dir() / "smollm2_gguf_q8_0.yaml"))
    cfg = CompareConfig.make(True, groups=("scaling",), replicas=2)
    inputs = prepare_inputs(cfg)
    target = loader.load(Q8, settings=engine_settings(Q8, cfg, None))
    run = Run(target, None, inputs, cfg, fingerprint(), "variant")
    group = get_group("scaling")
    assert group.applies(cfg) and group.needs == "own"
    figs = group.measure(run)

    share = len(cores) // 2
    by = {(f.metric, f.params["layout"], f.params["concurrency"]): f for f in figs}
    labels = [f"1x{share}", f"2x{share}", f"1x{2 * share}"]
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
    assert two["replicas"] == 2 and two["client"] == "round-robin over the replicas"
    assert len(two["cores"]) == 2 and not set(two["cores"][0]) & set(two["cores"][1])  # disjoint shares
    # 4 requests in flight over two single-core replicas beat one single-core server
    assert by[("output_tokens_per_s", labels[1], 4)].value > by[("output_tokens_per_s", labels[0], 4)].value

    store = Store(tmp_path / "r.sqlite")
    store.put("scaling", figs)
    md = leaderboard.to_markdown(store)
    assert "## Replica sweep" in md
    for label in labels:
        assert f"| {Q8} | llamacpp | {label} |" in md, md
