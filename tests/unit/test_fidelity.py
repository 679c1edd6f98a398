import math

import numpy as np
import pytest

from quantkit.evaluation import fidelity


def _row(probs: dict[int, float], actual: int) -> dict:
    top = sorted(((t, math.log(p)) for t, p in probs.items()), key=lambda x: -x[1])
    return {"token": math.log(probs[actual]), "top": [[t, lp] for t, lp in top]}


def test_identical_top_k_with_a_tail_gives_exactly_zero():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(100))
    top = np.argsort(-p)[:20]
    rows = [[int(i), float(np.log(p[i]))] for i in top]
    assert fidelity.kl_position(rows, rows, vocab_size=100) == 0.0


def test_identical_distributions_have_zero_kl_full_agreement_and_known_ppl():
    rows = [_row({1: 0.5, 2: 0.25, 3: 0.25}, 1), _row({1: 0.5, 2: 0.25, 3: 0.25}, 2)]
    r = fidelity.summarize(rows, rows, vocab_size=3)
    assert r.kld_mean == 0 and r.kld_p99 == 0 and r.top1 == 1.0
    # nll = (-ln .5 - ln .25)/2 = 1.5 ln 2 -> ppl = 2**1.5
    assert r.ppl == pytest.approx(2 ** 1.5)


def test_kl_matches_the_hand_computed_value_when_top_k_is_the_whole_vocabulary():
    p = {0: 0.7, 1: 0.2, 2: 0.1}
    q = {0: 0.5, 1: 0.3, 2: 0.2}
    expected = sum(p[i] * math.log(p[i] / q[i]) for i in p)  # 0.0851...
    got = fidelity.kl_position(_row(p, 0)["top"], _row(q, 0)["top"], vocab_size=3)
    assert got == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.08512, abs=1e-5)


def test_tail_bucket_coarse_grains_and_never_exceeds_full_kl():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.dirichlet(np.ones(50) * 0.3)
        q = rng.dirichlet(np.ones(50) * 0.3)
        full = float(np.sum(p * np.log(p / q)))
        k = 5
        top = np.argsort(-p)[:k]
        ref_top = [[int(i), math.log(p[i])] for i in top]
        var_top = [[int(i), math.log(q[i])] for i in top]  # exact q for those ids
        approx = fidelity.kl_position(ref_top, var_top, vocab_size=50)
        assert 0 <= approx <= full + 1e-9


def test_top1_disagreement_and_stderr():
    a = [_row({1: 0.6, 2: 0.4}, 1)] * 3 + [_row({1: 0.6, 2: 0.4}, 1)]
    b = [_row({1: 0.6, 2: 0.4}, 1)] * 3 + [_row({1: 0.4, 2: 0.6}, 1)]
    r = fidelity.summarize(a, b, vocab_size=2)
    assert r.top1 == 0.75 and r.top1_stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert r.kld_mean > 0


def test_ppl_ratio_is_paired_over_the_same_tokens():
    # variant NLL = reference NLL + d on each token; d = (0.1, 0.3): mean 0.2, sd 0.1414, se 0.1
    ref = [_row({1: 0.5, 2: 0.5}, 1), _row({1: 0.25, 2: 0.75}, 1)]
    var = [{"token": r["token"] - d, "top": r["top"]} for r, d in zip(ref, (0.1, 0.3))]
    r = fidelity.summarize(ref, var, vocab_size=2)
    assert r.ppl_ratio == pytest.approx(math.exp(0.2))
    assert r.ppl_ratio_stderr == pytest.approx(math.exp(0.2) * 0.1)
    same = fidelity.summarize(ref, ref, vocab_size=2)
    assert same.ppl_ratio == 1.0 and same.ppl_ratio_stderr == 0.0


def test_windows_and_scored_half():
    toks = list(range(100))
    w = fidelity.windows(toks, 32, 10)
    assert len(w) == 3 and w[1][0] == 32
    rows = [{"i": i} for i in range(31)]  # predictions for positions 1..31
    kept = fidelity.scored_slice(rows, 32)
    assert kept[0]["i"] == 15 and len(kept) == 16  # positions 16..31


def test_misaligned_rows_are_refused():
    with pytest.raises(ValueError, match="misaligned"):
        fidelity.summarize([_row({1: 1.0}, 1)], [], vocab_size=1)


def test_median_spread_and_ties():
    from quantkit.evaluation.stats import median_spread, tie

    assert median_spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0, 3.0)
    assert tie(0.50, 0.02, 0.53, 0.02)  # 0.03 < 1.96 * 0.028
    assert not tie(0.50, 0.01, 0.60, 0.01)
    assert not tie(0.5, None, 0.5, 0.1)


def test_roofline_bound_by_hand():
    from quantkit.evaluation.roofline import bound_tokens_per_s, measure_bandwidth_gbs

    # 10 GB/s over 100 MB of weights + 1000 B/token x 1000 tokens of KV (1 MB) -> 10e9 / 101e6
    assert bound_tokens_per_s(10.0, 100e6, 1000, 1000) == pytest.approx(10e9 / 101e6)
    gbs, threads = measure_bandwidth_gbs(size_mib=16, repeats=2)
    assert gbs > 0.1 and threads >= 1


def test_serving_percentiles():
    from quantkit.evaluation.serving import percentile

    values = [0.1 * i for i in range(1, 11)]
    assert percentile(values, 50) == pytest.approx(0.5) or percentile(values, 50) == pytest.approx(0.6)
    assert percentile(values, 90) == pytest.approx(0.9)
    assert percentile([3.0], 90) == 3.0
