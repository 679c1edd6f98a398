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
