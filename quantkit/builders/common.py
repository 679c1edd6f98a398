"""What every builder shares: calibration text, source checks, the manifest skeleton."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from quantkit import evaldata, hardware
from quantkit.calibration import PACKING, PASSAGES
from quantkit.envs import manager
from quantkit.envs.specs import env_names
from quantkit.errors import ConfigError, QuantkitError
from quantkit.recipes import Calibration, Recipe
from quantkit.sources import Source


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_calibration(calib: Calibration, out_file: Path) -> int:
    """Write the passages calibration may draw from, in the order it takes them (JSONL of
    {"text"}); returns how many. The worker packs them with the reference tokenizer into exactly
    samples x seq_len tokens (quantkit.calibration) and reports what it used."""
    if "/" in calib.dataset:
        raise ConfigError(f"calibration.dataset {calib.dataset!r}: hub datasets need a hub, which this build "
                          "cannot reach here", hint="use a name from evals/datasets.yaml, e.g. lambada")
    texts = evaldata.calibration_texts(calib.dataset)
    if not texts:
        raise ConfigError(f"calibration.dataset {calib.dataset!r} has no passages for calibration")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return len(texts)


def calibration_record(calib: Calibration, packed: dict) -> dict:
    """Manifest fields for the calibration the worker reports: packed, exactly samples x seq_len
    tokens; one passage per sample (`packing: passages`), samples sequences of at most seq_len."""
    full = calib.samples * calib.seq_len
    if packed["sequences"] != calib.samples or (packed["tokens"] != full if calib.packing == "packed"
                                                  else not 0 < packed["tokens"] <= full):
        raise QuantkitError(f"calibration ({calib.packing}) made {packed['sequences']} sequences / {packed['tokens']} "
                            f"tokens, not calibration.samples x seq_len = {calib.samples} x {calib.seq_len}")
    return {"calibration_samples_used": packed["sequences"], "calibration_tokens": packed["tokens"],
            "calibration_packing": {**packed, "dataset": calib.dataset,
                                    "passages": f"{calib.dataset}: second half, from its last passage backwards "
                                                "(evaluation reads the first half)"}}


def env_versions(name: str) -> dict:
    marker = manager.read_marker(name) or {}
    return marker.get("versions", {})


def build_revision(recipe: Recipe) -> dict:
    """What, besides the recipe and the source, decides a build's content: reuse must match it."""
    if not recipe.calibration:
        return {}
    return {"calibration": PACKING if recipe.calibration.packing == "packed" else PASSAGES}


def manifest_skeleton(recipe: Recipe, source: Source, recipe_file: str | None) -> dict:
    hw = hardware.detect()
    return {
        "name": recipe.name,
        "status": "building",
        "recipe": recipe.model_dump(mode="json"),
        "recipe_file": recipe_file,
        "recipe_fingerprint": recipe.fingerprint(),
        "source": {"spec": source.spec, "location": source.location, **source.identity()},
        "calibration": recipe.calibration.model_dump(mode="json") if recipe.calibration else None,
        # how calibration text becomes sequences: a build with other packing is another build
        "build_revision": build_revision(recipe),
        "built_on": {"hardware": hw.describe(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quantkit_envs": {n: env_versions(n) for n in env_names()},
    }
