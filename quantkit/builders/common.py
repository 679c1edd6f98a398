"""What every builder shares: calibration text, source checks, the manifest skeleton."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from quantkit import evaldata, hardware
from quantkit.envs import manager
from quantkit.envs.specs import ENGINE_NAMES
from quantkit.errors import ConfigError
from quantkit.recipes import Calibration, Recipe
from quantkit.sources import Source


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_calibration(calib: Calibration, out_file: Path) -> int:
    """Write calibration passages (JSONL of {"text"}); returns how many were written."""
    if "/" in calib.dataset:
        raise ConfigError(f"calibration.dataset {calib.dataset!r}: hub datasets need a hub, which this build "
                          "cannot reach here", hint="use a name from evals/datasets.yaml, e.g. lambada")
    texts = evaldata.load_texts(calib.dataset, limit=calib.samples)
    if len(texts) < calib.samples:
        raise ConfigError(f"calibration.samples={calib.samples} but {calib.dataset} has only {len(texts)} passages")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return len(texts)


def env_versions(name: str) -> dict:
    marker = manager.read_marker(name) or {}
    return marker.get("versions", {})


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
        "built_on": {"hardware": hw.describe(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quantkit_envs": {n: env_versions(n) for n in ENGINE_NAMES},
    }
