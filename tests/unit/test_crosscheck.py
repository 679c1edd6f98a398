from quantkit.engines.llamacpp.config import LlamaCppSettings
from quantkit.evaluation.crosscheck import llama_bench_flags


def test_llama_bench_gets_the_targets_settings():
    flags = llama_bench_flags(LlamaCppSettings(n_gpu_layers=-1, flash_attn=True, n_batch=256, cache_type_k="q8_0",
                                               cache_type_v="q4_0").model_dump(), threads=16)
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert pairs == {"-t": "16", "-ngl": "999", "-fa": "1", "-b": "256", "-ctk": "q8_0", "-ctv": "q4_0"}


def test_cpu_defaults_turn_off_what_llama_bench_would_turn_on():
    pairs = dict(zip(*[iter(llama_bench_flags(LlamaCppSettings().model_dump(), threads=2))] * 2))
    assert pairs["-ngl"] == "0" and pairs["-fa"] == "0" and pairs["-b"] == str(LlamaCppSettings().n_batch)


def test_median_ci_matches_the_binomial_order_statistics():
    """The interval's ranks against scipy's binomial tail, for every n up to 80 (None below 6, where
    no 95% interval exists), on unsorted data."""
    import random

    scipy_stats = __import__("pytest").importorskip("scipy.stats")
    from quantkit.evaluation.stats import median_ci

    rng = random.Random(7)
    for n in range(1, 81):
        values = [rng.lognormvariate(0, 0.1) for _ in range(n)]
        ranks = [j for j in range(1, n // 2 + 1) if scipy_stats.binom.cdf(j - 1, n, 0.5) <= 0.025]
        s = sorted(values)
        expected = (s[max(ranks) - 1], s[n - max(ranks)]) if ranks else None
        assert median_ci(values) == expected, n


def test_median_ci_covers_the_median_about_95_percent_of_the_time():
    """Coverage on skewed draws (a lognormal, like speed ratios): the true median inside the
    interval in about 95.7% (its exact coverage at n = 30) of 2,000 samples of 30, and not in all
    of them (an interval that always covers would be too wide to judge anything)."""
    import random

    from quantkit.evaluation.stats import median_ci

    rng = random.Random(11)
    covered = 0
    for _ in range(2000):
        ci = median_ci([rng.lognormvariate(0, 0.1) for _ in range(30)])
        assert ci is not None
        covered += ci[0] <= 1.0 <= ci[1]
    assert 0.94 <= covered / 2000 <= 0.98  # exact coverage at n = 30: 0.957
