"""Fuzz the recipe loader: whatever the file holds, `load_recipe` returns a Recipe or raises a
QuantkitError with a message that names the file, never any other exception, and never slowly.

Inputs: random bytes, YAML-ish text built from YAML's own punctuation, random nested data dumped as
YAML (plain and recipe-shaped), byte-level mutations of the shipped recipes, and random `--set`
overrides on them. QK_FUZZ_EXAMPLES=5000 runs a longer search than the default 120 per test.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantkit.errors import QuantkitError
from quantkit.recipes import Recipe, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
RECIPE_TEXTS = [p.read_bytes() for p in RECIPES]
FUZZ = settings(max_examples=int(os.environ.get("QK_FUZZ_EXAMPLES", "120")), deadline=2000,
                suppress_health_check=[HealthCheck.too_slow])

_dir = tempfile.TemporaryDirectory(prefix="quantkit-recipe-fuzz-")


def _check(content: bytes, overrides: list[str] | None = None) -> None:
    path = Path(_dir.name) / "fuzz.yaml"
    path.write_bytes(content)
    t0 = time.perf_counter()
    try:
        recipe = load_recipe(path, overrides)
    except QuantkitError as e:
        assert str(path) in str(e) or (overrides and "--set" in str(e)), str(e)
    else:
        assert isinstance(recipe, Recipe)
        assert len(recipe.fingerprint()) == 16  # what the builders do next with it
    assert time.perf_counter() - t0 < 1.5, content[:200]


# YAML's indicators and the recipe schema's own words, so the text reaches the parser's corners
YAMLISH = st.lists(st.one_of(
    st.sampled_from(list(":-?[]{},&*!|>'\"%@`#\n\n  \t") + ["---", "...", "<<", "!!binary", "!!set", "!!str",
                                                             "!!int", "!!float", "!!timestamp", "&a", "*a", "~"]),
    st.sampled_from(["name", "method", "kind", "gptq", "awq", "bnb", "gguf", "fp8", "int8", "calibration",
                     "dataset", "samples", "seq_len", "group_size", "type", "Q4_K_M", "quant_type", "fp4",
                     "double_quant", "source", "true", "null", "1e999", ".nan", "-0x1F", "2024-13-45",
                     "2001-12-14t21:59:43.10-05:00", "0o17", "1_000"]),
    st.text(max_size=8),
), max_size=60).map("".join)

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                    st.binary(max_size=10), st.dates())
NESTED = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(st.one_of(st.text(max_size=8), st.integers(),
                                                                                st.booleans()), kids, max_size=4)),
                      max_leaves=20)
METHOD = st.fixed_dictionaries({"kind": st.sampled_from(["awq", "gptq", "fp8", "int8", "gguf", "bnb", "x"])},
                               optional={k: NESTED | st.sampled_from(v) for k, v in {
                                   "scheme": ["W4A16", "W8A8", "FP8"], "group_size": [64, 128, 0, -1],
                                   "type": ["q4_k_m", "Q2_K", "Q9"], "imatrix": [True, False],
                                   "quant_type": ["nf4", "fp4", "NF4"], "double_quant": [True, False, "no"],
                                   "compute_dtype": ["bfloat16", "float32"], "ignore": [["lm_head"], "lm_head"],
                                   "dampening_frac": [0.01, 1.0, "x"], "backend": ["autoawq", "gpu"]}.items()})
RECIPE_SHAPED = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["x", "a.b-c", "", "-x", "[/x]"]) | st.text(max_size=10),
    "source": st.sampled_from(["default", "Qwen/Qwen2.5-0.5B-Instruct", "/nonexistent"]) | NESTED,
    "description": NESTED, "method": METHOD | NESTED,
    "calibration": st.fixed_dictionaries({}, optional={"dataset": NESTED, "samples": NESTED, "seq_len": NESTED,
                                                       "seed": NESTED}) | NESTED,
    "extra": NESTED})


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data):
    _check(data)


@FUZZ
@given(YAMLISH)
def test_yamlish_text(text):
    _check(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(NESTED)
def test_random_structures_dumped_as_yaml(data):
    _check(yaml.safe_dump(data).encode())


@FUZZ
@given(RECIPE_SHAPED)
def test_recipe_shaped_structures(data):
    _check(yaml.safe_dump(data, allow_unicode=True).encode())


@FUZZ
@given(st.sampled_from(RECIPE_TEXTS), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 40),
                                                         st.binary(max_size=12) | YAMLISH.map(str.encode)),
                                               min_size=1, max_size=4))
def test_mutated_shipped_recipes(text, edits):
    for at, cut, insert in edits:  # replace text[at:at+cut] with `insert`
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut:]
    _check(text)


OVERRIDE = st.tuples(st.sampled_from(["name", "method.kind", "method.group_size", "calibration.samples",
                                      "method", "calibration", "a.b.c", "", ".", "method.quant_type"]),
                     st.sampled_from(["=", "", "=="]), YAMLISH).map("".join)


@FUZZ
@given(st.sampled_from(RECIPE_TEXTS), st.lists(OVERRIDE, max_size=3))
def test_overrides_on_shipped_recipes(text, overrides):
    _check(text, overrides)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_survives_the_checks_the_fuzzer_relies_on(path):
    """The fuzz tests mutate these: each must itself load, or the mutations start from errors."""
    assert isinstance(load_recipe(path), Recipe)
