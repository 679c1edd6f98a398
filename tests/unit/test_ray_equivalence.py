"""The Ray-against-local store comparison (quantkit/benchmarks/ray_equivalence.py): deterministic
groups must match exactly (a last-digit difference, a missing figure or a changed sample size fails),
failures match by status whatever node their reason names, timed groups are shown as ratios only."""

from __future__ import annotations

from quantkit.benchmarks.ray_equivalence import compare_stores
from quantkit.results.store import Figure


def fig(variant: str, group: str, metric: str, value: float | None, **kw) -> Figure:
    return Figure(variant=variant, engine=kw.pop("engine", "llamacpp"), group=group, metric=metric, value=value,
                  uncertainty=kw.pop("uncertainty", 0.01), n=kw.pop("n", 1024), **kw)


def test_identical_stores_pass_and_timed_groups_show_their_ratio():
    local = [fig("q8", "fidelity", "kld_mean", 0.0123456789), fig("q8", "tasks", "acc", 0.45, params={"task": "arc_easy"}),
             fig("q8", "speed", "decode_tok_s", 100.0)]
    ray = [fig("q8", "fidelity", "kld_mean", 0.0123456789), fig("q8", "tasks", "acc", 0.45, params={"task": "arc_easy"}),
           fig("q8", "speed", "decode_tok_s", 93.0, conditions={"measured_alongside": ["q4"]})]
    rows = {r.group: r for r in compare_stores(local, ray)}
    assert rows["fidelity"].ok and rows["fidelity"].equal == 1
    assert rows["tasks"].ok and rows["tasks"].equal == 1
    speed = rows["speed"]
    assert speed.ok and not speed.exact and speed.differ and speed.ratios == [0.93]  # differs, but not judged


def test_a_last_digit_a_sample_size_or_a_missing_figure_fails():
    local = [fig("q8", "fidelity", "kld_mean", 0.0123456789), fig("q8", "fidelity", "top1", 0.97),
             fig("q4", "probes", "answer", None, text=" Paris."), fig("q4", "tasks", "acc", 0.4, params={"task": "gsm8k"})]
    ray = [fig("q8", "fidelity", "kld_mean", 0.0123456788), fig("q8", "fidelity", "top1", 0.97, n=1023),
           fig("q4", "probes", "answer", None, text=" Paris")]
    rows = {r.group: r for r in compare_stores(local, ray)}
    assert not rows["fidelity"].ok and len(rows["fidelity"].differ) == 2
    assert rows["fidelity"].differ[0] == ("q8 kld_mean: 0.0123456789 ± 0.01 (n=1024) -> 0.0123456788 ± 0.01 (n=1024)")
    assert rows["fidelity"].differ[1].endswith("(n=1024) -> 0.97 ± 0.01 (n=1023)")
    assert not rows["probes"].ok  # a generated text differs
    assert not rows["tasks"].ok and rows["tasks"].missing == ["q4 acc {'task': 'gsm8k'}"]


def test_failures_match_by_status_not_by_the_node_in_their_reason():
    local = [fig("gptq", "fidelity", "kld_mean", None, status="failed", reason="engine start failed on host-a")]
    ray = [fig("gptq", "fidelity", "kld_mean", None, status="failed", reason="engine start failed on node b")]
    rows = compare_stores(local, ray)
    assert rows[0].ok and rows[0].equal == 1
    ray_ok = [fig("gptq", "fidelity", "kld_mean", 0.2)]
    assert not compare_stores(local, ray_ok)[0].ok


def test_only_models_limits_both_stores():
    local = [fig("q8", "fidelity", "kld_mean", 0.1), fig("q4", "fidelity", "kld_mean", 0.2)]
    ray = [fig("q8", "fidelity", "kld_mean", 0.1)]
    assert not compare_stores(local, ray)[0].ok
    assert compare_stores(local, ray, only_models={"q8"})[0].ok
