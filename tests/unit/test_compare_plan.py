"""compare's plan: every variant is measured against the source model it was built from."""

import json

import pytest

from quantkit import sources
from quantkit.errors import ConfigError
from quantkit.evaluation import compare
from quantkit.results import leaderboard
from quantkit.results.store import Figure, Store


def _variant(models, name, spec):
    folder = models / "variants" / name
    folder.mkdir(parents=True)
    (folder / "quantkit-variant.json").write_text(json.dumps({"name": name, "status": "complete",
                                                              "source": {"spec": spec}, "format": "gguf"}))


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTKIT_MODELS", str(tmp_path))
    _variant(tmp_path, "smol-q4", "default")
    _variant(tmp_path, "qwen-awq", "Qwen/Qwen2.5-0.5B-Instruct")
    _variant(tmp_path, "qwen-q4", "Qwen/Qwen2.5-0.5B-Instruct")
    return tmp_path


def test_variants_are_grouped_under_their_own_reference(models):
    assert compare.plan([], all_=True) == [("reference", ["smol-q4"]),
                                           ("reference:Qwen/Qwen2.5-0.5B-Instruct", ["qwen-awq", "qwen-q4"])]
    assert compare.plan(["qwen-q4"], all_=False) == [("reference:Qwen/Qwen2.5-0.5B-Instruct", ["qwen-q4"])]
    assert compare.plan(["reference"], all_=False) == [("reference", [])]


def test_reference_names_keep_the_spec():
    assert sources.reference_name("default") == "reference"
    assert sources.reference_name("Qwen/Qwen2.5-0.5B-Instruct") == "reference:Qwen/Qwen2.5-0.5B-Instruct"
    assert sources.is_reference_name("reference:/data/llama") and not sources.is_reference_name("referenced")


def test_an_unknown_variant_is_a_clear_error(models):
    with pytest.raises(ConfigError, match="no complete variant 'nope'"):
        compare.plan(["nope"], all_=False)


def test_leaderboard_has_one_table_per_reference(tmp_path):
    s = Store(tmp_path / "r.sqlite")

    def fig(variant, ref, value):
        return Figure(variant, "vllm", "fidelity", "kld_mean", value, 0.01, 10, conditions={"compared_with": ref})

    qwen = "reference:Qwen/Qwen2.5-0.5B-Instruct"
    s.put("a", [fig("reference", "reference", 0.0), fig("smol-q4", "reference", 0.1)])
    s.put("b", [fig(qwen, qwen, 0.0), fig("qwen-awq", qwen, 0.05)])
    md = leaderboard.to_markdown(s)
    assert "## Compared with reference" in md and f"## Compared with {qwen}" in md
    qwen_table = md.split(f"## Compared with {qwen}")[1]
    assert qwen_table.index(f"| {qwen} |") < qwen_table.index("| qwen-awq |") and "smol-q4" not in qwen_table
    header, rows = leaderboard.full_table(s)
    assert header[-1] == "compared with"
    assert [(r[0], r[-1]) for r in rows] == [("reference", "reference"), ("smol-q4", "reference"),
                                             (qwen, qwen), ("qwen-awq", qwen)]


class NumpyEngine:
    """A stand-in worker for compare's fidelity orchestration only (the engines themselves are
    tested against real logits in tests/integration): logits are a fixed function of the tokens,
    plus this model's own deterministic perturbation; `topk_logprobs` follows the worker contract
    through quantkit.evaluation.fidelity.topk_from_logits."""

    def __init__(self, noise: float, seed: int, vocab: int = 512):
        self.noise, self.seed, self.vocab, self.calls = noise, seed, vocab, []

    def _logits(self, seq):
        import numpy as np

        rows = []
        for pos in range(len(seq)):
            r = np.random.default_rng(hash(tuple(seq[:pos + 1])) % 2**32)
            base = -2.0 * np.log(np.arange(1, self.vocab + 1))[r.permutation(self.vocab)]
            rows.append(base + self.noise * np.random.default_rng((self.seed, pos, seq[pos])).normal(size=self.vocab))
        return np.array(rows)

    def call(self, op, sequences, score_from, top_k, ref_ids=None):
        import numpy as np

        from quantkit.evaluation.fidelity import FIELDS, topk_from_logits
        from quantkit.workers import arrays

        assert op == "topk_logprobs"
        self.calls.append(len(sequences))
        out = []
        for i, seq in enumerate(sequences):
            logits = self._logits(seq)[score_from - 1:len(seq) - 1]
            ids = arrays.decode(ref_ids[i]) if ref_ids is not None else None
            t = topk_from_logits(logits, np.array(seq[score_from:]), top_k, ids=ids)
            out.append({k: arrays.encode(getattr(t, k)) for k in FIELDS})
        return out


def _run(name, engine, role, anchors, worker, windows):
    from types import SimpleNamespace

    from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run

    cfg = CompareConfig(window_len=16, windows=len(windows), top_k=32)
    target = SimpleNamespace(name=name, engine=SimpleNamespace(name=engine), kv_cache_type="f16",
                             settings=SimpleNamespace(model_dump=dict))
    run = Run(target, worker, Inputs(windows, [], [], 0, [], [], 512, None), cfg, {}, role, "reference", anchors)
    run.keys = {"fidelity": f"key-{name}"}
    return run


def test_fidelity_roles_reference_engine_baseline_and_variants(tmp_home):
    import random

    from quantkit.evaluation.groups.fidelity import measure_fidelity, rows_file
    from quantkit.evaluation.groups.run import Anchors

    rnd = random.Random(0)
    windows = [[rnd.randrange(512) for _ in range(16)] for _ in range(6)]
    anchors = Anchors("reference", reference_key="key-reference", reference_engine="vllm")
    anchors.baselines = {"vllm": ("reference", "key-reference"), "llamacpp": ("f16", "key-f16")}
    ref_engine = NumpyEngine(0.0, 1)
    ref = {f.metric: f for f in measure_fidelity(_run("reference", "vllm", "reference", anchors, ref_engine, windows)) if not f.params}
    assert ref["kld_mean"].value == 0.0 and ref["base_kld_mean"].value == 0.0
    assert ref["noise_kld_mean"].value == 0.0  # a deterministic engine: re-scoring changes nothing
    assert ref_engine.calls == [6, 1, 1, 1, 1, 1, 1]  # all windows in one call, then one per call (noise floor)
    assert rows_file("key-reference").exists()

    f16 = {f.metric: f for f in measure_fidelity(_run("f16", "llamacpp", "baseline", anchors, NumpyEngine(0.05, 2),
                                                      windows)) if not f.params}
    assert f16["kld_mean"].value > 0 and f16["base_kld_mean"].value == 0.0  # engine floor; itself
    assert f16["kld_mean"].conditions["role"] == "engine baseline of llamacpp" and rows_file("key-f16").exists()

    figs_q = measure_fidelity(_run("q4", "llamacpp", "variant", anchors, NumpyEngine(0.3, 3), windows))
    q = {f.metric: f for f in figs_q if not f.params}
    assert q["kld_mean"].value > f16["kld_mean"].value and 0 < q["base_kld_mean"].value
    assert q["base_kld_mean"].conditions["baseline"] == "f16 on llamacpp"
    buckets = [f for f in figs_q if f.metric == "kld_mean" and f.params]
    assert q["kld_mean"].n == 6 * 8 and buckets and sum(f.n for f in buckets) == q["kld_mean"].n
    assert all(0 <= f.params["top1_p_lo"] < f.params["top1_p_hi"] <= 1 for f in buckets)

    awq = {f.metric: f for f in measure_fidelity(_run("awq", "vllm", "variant", anchors, NumpyEngine(0.3, 4),
                                                      windows)) if not f.params}
    assert awq["base_kld_mean"].value == awq["kld_mean"].value  # vLLM's baseline is the reference itself
    assert "the reference itself" in awq["base_kld_mean"].conditions["baseline"]

    anchors.baselines.pop("llamacpp")
    anchors.missing["llamacpp"] = "its full-precision baseline could not be built: no disk"
    q2 = measure_fidelity(_run("q2", "llamacpp", "variant", anchors, NumpyEngine(1.0, 5), windows))
    failed = [f for f in q2 if f.status == "failed"]
    assert [(f.metric, f.reason) for f in failed] == [("base_kld_mean", anchors.missing["llamacpp"])]
    assert any(f.metric == "kld_mean" and f.status == "ok" for f in q2)


def test_a_new_baseline_rows_file_replaces_the_old_one(tmp_home):
    import numpy as np

    from quantkit.evaluation.fidelity import topk_from_logits
    from quantkit.evaluation.groups.fidelity import rows_file, save_rows

    rows = topk_from_logits(np.zeros((2, 8)), np.array([0, 1]), 4)
    save_rows(rows, "old", "reference|vllm|setup")
    save_rows(rows, "other", "reference|vllm|quick")
    save_rows(rows, "new", "reference|vllm|setup")
    assert not rows_file("old").exists() and rows_file("new").exists() and rows_file("other").exists()


def test_engine_scoped_settings_reach_only_that_engines_models():
    from quantkit.evaluation.compare import scoped_settings

    extra = {"llamacpp.n_threads": 1, "vllm.max_num_seqs": 4, "seed": 3}
    assert scoped_settings(extra, "llamacpp") == {"n_threads": 1, "seed": 3}
    assert scoped_settings(extra, "vllm") == {"max_num_seqs": 4, "seed": 3}
    assert scoped_settings({"not_an_engine.x": 1}, "vllm") == {"not_an_engine.x": 1}  # left for the engine to refuse
    assert scoped_settings(None, "vllm") == {}
