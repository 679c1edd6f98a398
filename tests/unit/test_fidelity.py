"""Fidelity statistics: exact top-K + tail KL, and the llama-perplexity statistics around it.

The KL tests use realistic shapes: Zipf-like logits over SmolLM2's 49,152-token vocabulary with
heavy-tailed (Student-t) perturbations, so that the model's own top-K lists differ from the
baseline's (disjoint entries at every noise level). The same properties on real llama.cpp logits
are asserted in tests/integration/test_kl_crosscheck.py.
"""

import math

import numpy as np
import pytest

from quantkit.evaluation import fidelity
from quantkit.evaluation.fidelity import (
    TopK,
    full_kl,
    kl_per_position,
    summarize,
    topk_from_logits,
)
from quantkit.workers import arrays

VOCAB = 49_152


def zipf_logits(rng: np.random.Generator, n: int, vocab: int = VOCAB) -> np.ndarray:
    """Per position: logits -alpha * log(rank) + N(0, 0.3) over a random permutation of the
    vocabulary, alpha in [1.3, 3] (from diffuse to confident positions)."""
    alpha = rng.uniform(1.3, 3.0, size=(n, 1))
    logits = -alpha * np.log(np.arange(1, vocab + 1))[None, :] + rng.normal(0, 0.3, (n, vocab))
    perm = np.argsort(rng.random((n, vocab)), axis=1)
    out = np.empty_like(logits)
    np.put_along_axis(out, perm, logits, axis=1)
    return out


def perturb(rng: np.random.Generator, logits: np.ndarray, scale: float) -> np.ndarray:
    """Quantization-like noise: heavy-tailed, different for every logit."""
    return logits + scale * rng.standard_t(4, logits.shape)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    base = zipf_logits(rng, 48)
    tokens = rng.integers(0, VOCAB, len(base))
    return rng, base, tokens


@pytest.mark.parametrize("scale", [0.02, 0.1, 0.3, 1.0])
def test_exact_kl_is_a_lower_bound_even_when_top_k_lists_differ(synthetic, scale):
    rng, base_logits, tokens = synthetic
    model_logits = perturb(rng, base_logits, scale)
    base = topk_from_logits(base_logits, tokens, 100)
    model = topk_from_logits(model_logits, tokens, 100, ids=base.ids)
    own = topk_from_logits(model_logits, tokens, 100)
    disjoint = np.mean([len(set(a) - set(b)) for a, b in zip(base.ids, own.ids)])
    assert disjoint > 0  # the model's own top-100 misses some of the baseline's: the hard case
    full = full_kl(base_logits, model_logits)
    kl = kl_per_position(base, model)
    # float32 log-probs cross the protocol: a rounding allowance of 1e-6 nats per position
    assert np.all(kl <= full + 1e-6), (kl - full).max()
    assert np.all(kl >= -1e-6)


def test_completely_disjoint_top_k_lists_stay_a_lower_bound():
    rng = np.random.default_rng(1)
    base_logits = zipf_logits(rng, 16)
    model_logits = base_logits[:, ::-1].copy()  # the baseline's top tokens become the model's least likely
    tokens = rng.integers(0, VOCAB, 16)
    base = topk_from_logits(base_logits, tokens, 100)
    own = topk_from_logits(model_logits, tokens, 100)
    assert all(not set(a) & set(b) for a, b in zip(base.ids, own.ids))
    kl = kl_per_position(base, topk_from_logits(model_logits, tokens, 100, ids=base.ids))
    full = full_kl(base_logits, model_logits)
    assert np.all(kl <= full * (1 + 1e-9)) and np.all(kl > 0.5 * full)


def test_within_one_percent_of_full_kl_when_top_k_holds_the_mass():
    """The gap is the KL inside the tail bucket, p_tail x KL(tail | tail): K=100 on confident
    positions (top-100 holding >= 99.5% of the mass, as real LM positions mostly do) loses < 1%."""
    rng = np.random.default_rng(2)
    alpha = rng.uniform(2.2, 3.5, size=(48, 1))
    base_logits = -alpha * np.log(np.arange(1, VOCAB + 1))[None, :] + rng.normal(0, 0.3, (48, VOCAB))
    tokens = rng.integers(0, VOCAB, 48)
    base = topk_from_logits(base_logits, tokens, 100)
    assert np.exp(base.tail_logprob).max() < 0.02
    for scale in (0.05, 0.3, 1.0):
        model_logits = perturb(rng, base_logits, scale)
        kl = kl_per_position(base, topk_from_logits(model_logits, tokens, 100, ids=base.ids))
        full = full_kl(base_logits, model_logits)
        assert 0.99 * full.mean() <= kl.mean() <= full.mean() + 1e-9, (scale, kl.mean() / full.mean())


def test_the_gap_to_full_kl_is_exactly_the_kl_inside_the_tail(synthetic):
    """full KL - (top-K + tail) KL = p_tail * KL(P | tail || Q | tail): what the bound leaves out is
    the divergence between the two tails' shapes, never a guess. On diffuse positions (tail mass
    ~10%, as SmolLM2-135M has on LAMBADA at K=128) that is ~15% of the KL, hence K is a setting."""
    rng, base_logits, tokens = synthetic
    model_logits = perturb(rng, base_logits, 0.3)
    base = topk_from_logits(base_logits, tokens, 100)
    kl = kl_per_position(base, topk_from_logits(model_logits, tokens, 100, ids=base.ids))
    lp, lq = fidelity.log_softmax(base_logits), fidelity.log_softmax(model_logits)
    tail = np.ones_like(lp, dtype=bool)
    np.put_along_axis(tail, base.ids.astype(np.int64), False, axis=1)
    gaps = []
    for i in range(len(lp)):
        a, b = lp[i][tail[i]], lq[i][tail[i]]
        pa, qb = np.logaddexp.reduce(a), np.logaddexp.reduce(b)
        cond = np.exp(a - pa)
        gaps.append(np.exp(pa) * np.sum(cond * ((a - pa) - (b - qb))))
    np.testing.assert_allclose(full_kl(base_logits, model_logits) - kl, gaps, atol=2e-6)


def test_truncating_k_is_the_same_as_asking_for_fewer_ids(synthetic):
    rng, base_logits, tokens = synthetic
    model_logits = perturb(rng, base_logits, 0.3)
    b128 = topk_from_logits(base_logits, tokens, 128)
    m128 = topk_from_logits(model_logits, tokens, 128, ids=b128.ids)
    b100 = topk_from_logits(base_logits, tokens, 100)
    m100 = topk_from_logits(model_logits, tokens, 100, ids=b100.ids)
    np.testing.assert_allclose(kl_per_position(b128.truncate(100), m128.truncate(100)),
                               kl_per_position(b100, m100), atol=1e-6)
    assert np.all(kl_per_position(b128.truncate(100), m128.truncate(100))
                  <= kl_per_position(b128, m128) + 1e-6)  # more ids: a tighter bound


def test_identical_answers_give_exactly_zero_and_full_agreement(synthetic):
    _, base_logits, tokens = synthetic
    base = topk_from_logits(base_logits, tokens, 128)
    r = summarize(base, base)
    assert r.kld_mean == 0.0 and r.kld_max == 0.0 and r.top1 == 1.0 and r.ppl_ratio == 1.0
    assert r.dp_rms == 0.0 and r.k == 128 and r.n == len(tokens)


def test_kl_by_hand_on_a_tiny_vocabulary():
    p = np.log(np.array([[0.7, 0.2, 0.1]]))
    q = np.log(np.array([[0.5, 0.3, 0.2]]))
    base = topk_from_logits(p, np.array([0]), 3)  # K = whole vocabulary: no tail
    model = topk_from_logits(q, np.array([0]), 3, ids=base.ids)
    expected = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.3) + 0.1 * math.log(0.1 / 0.2)
    assert np.isneginf(base.tail_logprob[0])
    assert kl_per_position(base, model)[0] == pytest.approx(expected, abs=1e-7)
    # K = 1: {token 0} + tail {1, 2}: 0.7 ln(0.7/0.5) + 0.3 ln(0.3/0.5)
    b1 = topk_from_logits(p, np.array([0]), 1)
    m1 = topk_from_logits(q, np.array([0]), 1, ids=b1.ids)
    assert kl_per_position(b1, m1)[0] == pytest.approx(0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5),
                                                       abs=1e-7)


def test_a_model_not_scored_on_the_baselines_ids_is_refused(synthetic):
    rng, base_logits, tokens = synthetic
    base = topk_from_logits(base_logits, tokens, 20)
    own = topk_from_logits(perturb(rng, base_logits, 1.0), tokens, 20)
    with pytest.raises(ValueError, match="not scored on the baseline's top-K ids"):
        kl_per_position(base, own)
    with pytest.raises(ValueError, match="misaligned"):
        summarize(base, TopK.concat([base, base]))


def test_statistics_follow_llama_perplexity():
    """Hand-checkable: 4 positions, 2-token vocabulary, K=1."""
    p = np.log(np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]]))
    q = np.log(np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.4, 0.6]]))
    tokens = np.array([0, 0, 0, 0])
    base = topk_from_logits(p, tokens, 1)
    model = topk_from_logits(q, tokens, 1, ids=base.ids)
    r = summarize(base, model)
    assert r.top1 == 0.75 and r.top1_stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 3))  # llama: n - 1
    kl_last = 0.6 * math.log(0.6 / 0.4) + 0.4 * math.log(0.4 / 0.6)
    assert r.kld_mean == pytest.approx(kl_last / 4) and r.kld_max == pytest.approx(kl_last)
    assert r.kld_median == 0.0
    assert r.kld_p99 == pytest.approx(np.percentile([0, 0, 0, kl_last], 99))  # linear, as llama's percentile()
    assert r.dp_mean == pytest.approx(-0.2 / 4) and r.dp_rms == pytest.approx(math.sqrt(0.04 / 4))
    # paired PPL ratio: NLL differences (0, 0, 0, ln 0.6 - ln 0.4)
    d = np.array([0, 0, 0, math.log(0.6 / 0.4)])
    assert r.ppl_ratio == pytest.approx(math.exp(d.mean()))
    assert r.ppl_ratio_stderr == pytest.approx(math.exp(d.mean()) * d.std(ddof=1) / 2)


def test_kld_by_confidence_buckets_cover_every_position(synthetic):
    rng, base_logits, tokens = synthetic
    base = topk_from_logits(base_logits, tokens, 64)
    model = topk_from_logits(perturb(rng, base_logits, 0.3), tokens, 64, ids=base.ids)
    r = summarize(base, model)
    assert sum(b["n"] for b in r.by_confidence) == r.n
    assert [b["lo"] for b in r.by_confidence] == list(fidelity.CONFIDENCE_EDGES[:-1])
    weighted = sum(b["kld_mean"] * b["n"] for b in r.by_confidence if b["n"])
    assert weighted / r.n == pytest.approx(r.kld_mean)


def test_answers_round_trip_through_the_protocol_and_disk(synthetic, tmp_path):
    _, base_logits, tokens = synthetic
    base = topk_from_logits(base_logits, tokens, 128)
    answers = [{name: arrays.encode(getattr(base, name)[a:b]) for name in fidelity.FIELDS}
               for a, b in ((0, 20), (20, 48))]
    joined = TopK.from_answers(answers)
    assert joined.per_window == [20, 28]
    assert [arrays.decode(x).shape for x in joined.window_ids()] == [(20, 128), (28, 128)]
    path = tmp_path / "rows" / "ref.npz"
    joined.save(path)
    back = TopK.load(path)
    assert back.per_window == [20, 28] and back.ids.dtype == np.int32 and back.logprobs.dtype == np.float32
    assert summarize(joined, back).kld_max == 0.0
    assert back.slice_windows(1, 2).per_window == [28]
    # 100k positions x K=128 (ids + log-probs + per-position floats): about 100 MB
    assert path.stat().st_size < 48 * (128 * 8 + 3 * 8) + 4096


def test_windows_and_scored_half():
    toks = list(range(100))
    w = fidelity.windows(toks, 32, 10)
    assert len(w) == 3 and w[1][0] == 32
    assert fidelity.score_from(32) == 16  # rows predict positions 16..31: the second half


def test_floors_and_overlaps():
    assert fidelity.below_floor(0.0101, 0.0003, 0.0100, 0.0003)
    assert not fidelity.below_floor(0.02, 0.0003, 0.0100, 0.0003)
    assert fidelity.below_floor(0.001, 0.0001, 0.01, 0.001)  # below the floor is below it
    assert fidelity.intervals_overlap(0.050, 0.002, 0.056, 0.002)
    assert not fidelity.intervals_overlap(0.050, 0.001, 0.060, 0.001)


def test_median_spread_and_ties():
    from quantkit.evaluation.stats import median_spread, tie

    assert median_spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0, 3.0)
    assert tie(0.50, 0.02, 0.53, 0.02)  # 0.03 < 1.96 * 0.028
    assert not tie(0.50, 0.01, 0.60, 0.01)
    assert not tie(0.5, None, 0.5, 0.1)


def test_exact_mcnemar_and_flips():
    from quantkit.evaluation.stats import flips, mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # one-sided 1/32, doubled
    assert mcnemar_exact(3, 3) == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    for lost, gained in [(1, 9), (7, 2), (12, 30), (0, 1)]:
        expected = scipy_stats.binomtest(lost, lost + gained, 0.5).pvalue
        assert mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-12)
    ref = {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.0, "4": 1.0}
    var = {"0": 1.0, "1": 0.0, "2": 1.0, "3": 0.0, "9": 1.0}
    assert flips(ref, var) == {"n": 4, "lost": 1, "gained": 1, "p": 1.0}
    assert flips(ref, {"0": 0.5}) is None and flips(ref, {"7": 1.0}) is None


def test_roofline_bound_by_hand():
    from quantkit.evaluation.roofline import bound_tokens_per_s, measure_bandwidth_gbs

    # 10 GB/s over 100 MB of weights + 1000 B/token x 1000 tokens of KV (1 MB) -> 10e9 / 101e6
    assert bound_tokens_per_s(10.0, 100e6, 1000, 1000) == pytest.approx(10e9 / 101e6)
    gbs, threads = measure_bandwidth_gbs(size_mib=16, repeats=2)
    assert gbs > 0.1 and threads >= 1


def test_a_roofline_fraction_above_one_is_a_broken_measurement():
    from quantkit.errors import QuantkitError
    from quantkit.evaluation.compare import check_fraction_of_bound

    assert check_fraction_of_bound(50.0, 100.0) == 0.5
    with pytest.raises(QuantkitError, match="broken measurement.*97.60x"):
        check_fraction_of_bound(9760.0, 100.0)  # issue 9: 0.03 ms ITL read as 97.6 x the bound
    with pytest.raises(QuantkitError, match="not computed"):
        check_fraction_of_bound(float("inf") * 0, 100.0)


def test_serving_percentiles():
    from quantkit.evaluation.serving import percentile

    values = [0.1 * i for i in range(1, 11)]
    assert percentile(values, 50) == pytest.approx(0.5) or percentile(values, 50) == pytest.approx(0.6)
    assert percentile(values, 90) == pytest.approx(0.9)
    assert percentile([3.0], 90) == 3.0


def test_the_llama_cpp_workers_reduction_matches_a_float64_log_softmax(synthetic):
    """engines/llamacpp/worker.reduce_rows (float32 passes, float64 sums) against the float64
    reference computation, on Zipf-like logits, given ids, and a row whose tail underflows float32."""
    from quantkit.engines.llamacpp.worker import reduce_rows

    rng, base_logits, tokens = synthetic
    x = base_logits.astype(np.float32)
    x[0, :] = -200.0
    x[0, 7] = 0.0  # everything but token 7 is e^-200 below it: float32's exp underflows
    truth = topk_from_logits(x.astype(np.float64), tokens, 256)
    got = reduce_rows(x, tokens, 256)
    assert np.array_equal(got["ids"][:, 0], truth.ids[:, 0]) and np.array_equal(got["argmax"], truth.argmax)
    np.testing.assert_allclose(got["logprobs"], truth.logprobs, atol=2e-6)
    # float32 exp per element (~6e-8 relative each), summed in float64: a few 1e-7 relative
    np.testing.assert_allclose(got["tail_logprob"], truth.tail_logprob, rtol=1e-6)
    np.testing.assert_allclose(got["token_logprob"], truth.token_logprob, rtol=1e-7)
    model = perturb(rng, base_logits, 0.3).astype(np.float32)
    given = reduce_rows(model, tokens, 256, truth.ids)
    assert np.array_equal(given["ids"], truth.ids.astype(np.int32))
    exact = topk_from_logits(model.astype(np.float64), tokens, 256, ids=truth.ids)
    np.testing.assert_allclose(given["tail_logprob"], exact.tail_logprob, rtol=1e-6)
