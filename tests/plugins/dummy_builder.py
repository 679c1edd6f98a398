"""A test-only builder and its recipe method, registered from the tests alone: writes a "dummy"
model, which the registry's format -> engine map sends to the dummy engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from quantkit.engines import registry
from quantkit.recipes import MethodBase

FORMAT = "dummy"


class DummyMethod(MethodBase):
    kind: Literal["dummyq"]
    vocab: int = Field(32, ge=2, le=1000)


def build(recipe, source, out: Path, progress, task) -> dict:
    progress.update(task, status="writing a dummy model")
    (out / "dummy.json").write_text(json.dumps({"vocab": recipe.method.vocab}))
    return {"format": FORMAT, "engine": registry.for_format(FORMAT).name, "weights_bytes": 4 * recipe.method.vocab,
            "size_on_disk_bytes": (out / "dummy.json").stat().st_size, "bits_per_weight": 32.0}
