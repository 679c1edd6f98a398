from pathlib import Path

import pytest

from quantkit.errors import ConfigError
from quantkit.recipes import apply_overrides, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_every_shipped_recipe_validates():
    assert len(RECIPES) >= 18
    kinds = {load_recipe(p).method.kind for p in RECIPES}
    assert kinds == {"awq", "gptq", "fp8", "int8", "gguf", "bnb"}


def test_shipped_smollm2_recipes_cover_the_required_variants():
    names = {load_recipe(p).name for p in RECIPES if p.name.startswith("smollm2_")}
    for q in ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k", "q4_k_m-imatrix"):
        assert f"smollm2-gguf-{q}" in names
    assert {"smollm2-awq-w4a16", "smollm2-gptq-w4a16", "smollm2-fp8-dynamic", "smollm2-int8-w8a8",
            "smollm2-bnb-nf4"} <= names


def test_wrong_field_names_file_field_and_value(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nmethod:\n  kind: gptq\n  group_size: big\ncalibration:\n  dataset: lambada\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(f)
    msg = str(e.value)
    assert str(f) in msg and "method.group_size" in msg and "'big'" in msg


def test_unknown_field_and_missing_field_are_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nmethod:\n  kind: fp8\n  schema: FP8\n")
    with pytest.raises(ConfigError, match="method.schema"):
        load_recipe(f)
    f.write_text("method:\n  kind: fp8\n")
    with pytest.raises(ConfigError, match="field 'name': Field required"):
        load_recipe(f)


def test_calibration_is_required_where_the_method_needs_it(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: x\nmethod:\n  kind: gguf\n  type: q4_k_m\n  imatrix: true\n")
    with pytest.raises(ConfigError, match="calibration"):
        load_recipe(f)
    f.write_text("name: x\nmethod:\n  kind: gguf\n  type: q4_k_m\n")
    assert load_recipe(f).method.type == "Q4_K_M"


def test_set_overrides_parse_yaml_values_and_change_the_fingerprint():
    base = load_recipe(RECIPES[0])
    path = [p for p in RECIPES if p.name == "smollm2_gptq_w4a16.yaml"][0]
    r = load_recipe(path, ["calibration.samples=64", "method.dampening_frac=0.05"])
    assert r.calibration.samples == 64 and r.method.dampening_frac == 0.05
    assert r.fingerprint() != load_recipe(path).fingerprint() and base.fingerprint()
    with pytest.raises(ConfigError, match="not key=value"):
        load_recipe(path, ["calibration.samples"])
    with pytest.raises(ConfigError, match="calibration.samples"):
        load_recipe(path, ["calibration.samples=-3"])


def test_apply_overrides_creates_sections():
    assert apply_overrides({}, ["a.b=1", "a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}
