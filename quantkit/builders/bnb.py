"""bitsandbytes NF4/FP4: quantized by vLLM at load time, so the "build" records how to load it."""

from __future__ import annotations

from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit.engines import registry
from quantkit.recipes import BnbMethod, Recipe
from quantkit.sources import Source

FORMAT = "bnb-on-load"


def build(recipe: Recipe, source: Source, out: Path, progress: Progress, task: TaskID) -> dict:
    m = recipe.method
    assert isinstance(m, BnbMethod)
    progress.update(task, status="recording load settings (bitsandbytes quantizes on load)")
    return {
        "format": FORMAT,
        "engine": registry.for_format(FORMAT).name,
        "requires": "CUDA (bitsandbytes kernels); vLLM quantizes the source weights at load time",
        # vLLM's bitsandbytes loader quantizes to NF4 with double quantization (the recipe refuses
        # anything else); the compute dtype reaches vLLM as its `dtype` (quantkit.engines.vllm.engine.bnb_settings).
        "load": {"model": source.location, "quantization": "bitsandbytes", "dtype": m.compute_dtype,
                 "bnb_4bit_quant_type": m.quant_type, "bnb_4bit_use_double_quant": m.double_quant,
                 "bnb_4bit_compute_dtype": m.compute_dtype},
        "weights_bytes": None,
        "size_on_disk_bytes": None,
        "bits_per_weight": None,
        "bits_per_weight_reason": "weights are quantized in GPU memory at load; nothing is stored",
    }
