import os
import subprocess
import sys
import time
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
    path = next(p for p in RECIPES if p.name == "smollm2_gptq_w4a16.yaml")
    r = load_recipe(path, ["calibration.samples=64", "method.dampening_frac=0.05"])
    assert r.calibration.samples == 64 and r.method.dampening_frac == 0.05
    assert r.fingerprint() != load_recipe(path).fingerprint() and base.fingerprint()
    with pytest.raises(ConfigError, match="not key=value"):
        load_recipe(path, ["calibration.samples"])
    with pytest.raises(ConfigError, match="calibration.samples"):
        load_recipe(path, ["calibration.samples=-3"])


def test_apply_overrides_creates_sections():
    assert apply_overrides({}, ["a.b=1", "a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


# --- malformed input: each is one clear ConfigError naming the file, never a traceback ---------------

ALIAS_BOMB = "".join(  # nine levels of nine aliases: 9**9 leaves once expanded, 600 bytes on disk
    f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
    for i in range(9))


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_binary_file_is_refused_as_not_text(tmp_path):
    f = tmp_path / "model.safetensors.yaml"
    f.write_bytes(b"name: x\n\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    assert "not a text file (byte 8 is not UTF-8)" in _refused(f)


def test_control_characters_are_refused_on_one_line(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_bytes(b"name: x\x07\nmethod: {kind: fp8}\n")  # valid UTF-8, but YAML allows no BEL
    msg = _refused(f, "not valid YAML")
    assert "\n" not in msg


def test_directory_is_refused(tmp_path):
    _refused(tmp_path, "is a directory, not a recipe file")


def test_alias_bomb_is_refused_quickly(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(ALIAS_BOMB)
    assert f.stat().st_size < 1000
    t0 = time.perf_counter()
    _refused(f, "expands to more than", "anchors and aliases")
    assert time.perf_counter() - t0 < 1.0


def test_a_few_aliases_are_still_fine(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: x\nmethod:\n  kind: gptq\n  group_size: 64\n  ignore: &skip [lm_head]\n"
                 "calibration: &cal {dataset: lambada, samples: 8, seq_len: 64}\n")
    r = load_recipe(f)
    assert r.calibration.samples == 8 and r.method.ignore == ["lm_head"]


def test_recursive_anchor_and_deep_nesting_are_refused(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: &n [*n]\n")
    _refused(f, "recursive anchor", "line 1")
    f.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")  # past Python's recursion limit
    _refused(f, "nests deeper than")


def test_oversized_file_is_refused_without_reading_it_whole(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("name: x\ndescription: " + "a" * 200_000 + "\nmethod: {kind: fp8}\n")
    _refused(f, "too large for a recipe")


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("name: a\nname: b\nmethod:\n  kind: fp8\n")
    _refused(f, "duplicate key 'name' at line 2", "first at line 1")
    f.write_text("name: a\nmethod:\n  kind: gptq\n  group_size: 64\n  group_size: 128\n"
                 "calibration: {dataset: lambada}\n")
    _refused(f, "duplicate key 'group_size' at line 5", "first at line 4")


def test_merge_key_override_is_not_a_duplicate(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("base: &b {kind: gptq, group_size: 128}\n")
    assert "base" in _refused(f)  # unknown top-level field, but the YAML itself is fine
    f.write_text("name: x\nmethod:\n  <<: {kind: gptq, group_size: 128}\n  group_size: 64\n"
                 "calibration: {dataset: lambada}\n")
    assert load_recipe(f).method.group_size == 64


@pytest.mark.parametrize("value", ["2024-13-45", "!!timestamp soon", "!!int ''", "!!float ''", "!!bool maybe",
                                   "9" * 5000, "!!int 0x", "!!float 1e"])
def test_values_pyyaml_cannot_construct_are_config_errors(tmp_path, value):
    # PyYAML raises ValueError, IndexError, KeyError or AttributeError for these
    f = tmp_path / "r.yaml"
    f.write_text(f"name: x\nmethod: {{kind: fp8}}\ndescription: {value}\n")
    assert "cannot be read" in _refused(f, "at line 3")


def test_overrides_go_through_the_same_checks(tmp_path):
    path = next(p for p in RECIPES if p.name == "smollm2_gptq_w4a16.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_recipe(path, ["method.ignore={a: 1, a: 2}"])


def test_long_input_is_shortened_in_the_message(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(f"name: '{'x ' * 500}'\nmethod: {{kind: fp8}}\n")
    msg = _refused(f, "field 'name'")
    assert len(msg) < 400


# --- bitsandbytes: vLLM's in-flight loader quantizes to NF4 with double quantization only ---------

def test_bnb_refuses_what_vllm_would_silently_ignore(tmp_path):
    f = tmp_path / "nf4.yaml"
    f.write_text("name: x\nmethod:\n  kind: bnb\n  quant_type: fp4\n")
    _refused(f, "field 'method.quant_type'", "NF4 with double quantization only", "'fp4'")
    f.write_text("name: x\nmethod:\n  kind: bnb\n  double_quant: false\n")
    _refused(f, "field 'method.double_quant'", "NF4 with double quantization only")
    f.write_text("name: x\nmethod:\n  kind: bnb\n  compute_dtype: float32\n")
    _refused(f, "field 'method.compute_dtype'")


def test_bnb_accepts_nf4_double_quant_and_either_compute_dtype(tmp_path):
    f = tmp_path / "nf4.yaml"
    f.write_text("name: x\nmethod:\n  kind: bnb\n  quant_type: NF4\n  compute_dtype: float16\n")
    m = load_recipe(f).method
    assert (m.quant_type, m.double_quant, m.compute_dtype) == ("nf4", True, "float16")
    f.write_text("name: x\nmethod: {kind: bnb}\n")
    assert load_recipe(f).method.compute_dtype == "bfloat16"


# --- the command line: a bad recipe is one clear error and exit 2, never a traceback ----------------

def _cli_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    (tmp_path / "dup.yaml").write_text("name: a\nname: b\nmethod:\n  kind: fp8\n")
    (tmp_path / "markup.yaml").write_text("name: '[/x]'\nmethod:\n  kind: fp8\n")  # rich markup in a value
    (tmp_path / "fp4.yaml").write_text("name: x\nmethod:\n  kind: bnb\n  quant_type: fp4\n")
    (tmp_path / "dir").mkdir()
    return {"binary": (tmp_path / "bin.yaml", "not a text file"),
            "directory": (tmp_path / "dir", "is a directory"),
            "alias bomb": (tmp_path / "bomb.yaml", "expands to more than"),
            "duplicate key": (tmp_path / "dup.yaml", "duplicate key 'name' at line 2"),
            "markup": (tmp_path / "markup.yaml", "(got '[/x]')"),
            "fp4": (tmp_path / "fp4.yaml", "NF4 with double quantization only")}


def test_cli_build_reports_each_bad_recipe_in_one_line(tmp_path):
    exe = Path(sys.executable).parent / "quantkit"
    env = {**os.environ, "QUANTKIT_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
    for case, (path, needle) in _cli_cases(tmp_path).items():
        t0 = time.perf_counter()
        p = subprocess.run([str(exe), "build", str(path)], check=False, capture_output=True, text=True, env=env, timeout=60)
        out = p.stdout + p.stderr
        assert p.returncode == 2, (case, out)
        assert "Traceback" not in out, (case, out)
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(path) in errors[0] and needle in out, (case, out)
        assert time.perf_counter() - t0 < 20, case
