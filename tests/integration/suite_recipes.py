"""The recipes the integration suite builds: the shipped recipes, with a test-scale calibration.

The suite builds every SmolLM2 recipe. At the recipes' own 32 x 256 packed tokens the calibrated
llm-compressor builds (GPTQ, INT8 SmoothQuant+GPTQ, AWQ) cost about 15 CPU-minutes each on this
2-core CPU, most of CI's budget. 8 packed sequences of the same length run exactly the same path
(packing, the manifest's token count, float32 calibration on CPU, imatrix chunks), so the suite
uses them; `make demo` builds the recipes as shipped. Every test that builds a calibrated recipe
goes through `load` so that all of them share one build instead of replacing each other's.
"""

from __future__ import annotations

from quantkit import builders, paths
from quantkit.recipes import load_recipe

TEST_CALIBRATION = ["calibration.samples=8"]


def load(stem: str, overrides: list[str] | tuple[str, ...] = ()):
    """recipes/<stem>.yaml with the suite's calibration (for recipes that calibrate) and `overrides`."""
    recipe = load_recipe(paths.recipes_dir() / f"{stem}.yaml")
    extra = TEST_CALIBRATION if recipe.calibration is not None else []
    return load_recipe(paths.recipes_dir() / f"{stem}.yaml", [*extra, *overrides])


def cli_overrides(stem: str) -> list[str]:
    """The same as `--set` options for `quantkit build`."""
    return [a for o in (TEST_CALIBRATION if load_recipe(paths.recipes_dir() / f"{stem}.yaml").calibration else [])
            for a in ("--set", o)]


def build(stem: str, overrides: list[str] | tuple[str, ...] = ()):
    """(recipe, variant) for recipes/<stem>.yaml at the suite's scale, built or reused."""
    recipe = load(stem, overrides)
    variant, _ = builders.build(recipe, recipe_file=f"recipes/{stem}.yaml")
    return recipe, variant
