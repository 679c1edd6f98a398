"""AWQ / GPTQ / FP8 / INT8 through llm-compressor's `oneshot`, in the `compressor` env.

Output: a compressed-tensors checkpoint that vLLM loads. AWQ with `backend: autoawq` runs
AutoAWQ in its own CUDA-only env instead and writes an AutoAWQ (GEMM) checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit import paths, safetensors_info
from quantkit.builders import groups, registry
from quantkit.builders.common import calibration_record, folder_bytes, write_calibration
from quantkit.envs.run import run_worker
from quantkit.errors import ConfigError, QuantkitError
from quantkit.hardware import detect
from quantkit.recipes import Recipe
from quantkit.sources import Source


def precheck(recipe: Recipe, source: Source) -> None:
    """Fail before any work: group sizes against the model's widths, AWQ backend availability."""
    m = recipe.method
    if m.kind == "awq" and getattr(m, "backend", None) == "autoawq" and not detect().has_cuda:
        raise ConfigError("method.backend 'autoawq' needs CUDA: AutoAWQ builds and runs only on NVIDIA GPUs "
                          "(and is archived upstream)", hint="use `--set method.backend=llmcompressor`, which runs on CPU")
    group = getattr(m, "group_size", None)
    if group and source.is_local:
        config = json.loads((Path(source.location) / "config.json").read_text())
        problem = groups.check(groups.widths_from_config(config), group)
        if problem:
            raise ConfigError(f"method.group_size: {problem}",
                              hint=f"e.g. `--set method.group_size={(groups.workable_group_sizes(groups.widths_from_config(config)) or [0])[-1]}`")


def build(recipe: Recipe, source: Source, out: Path, progress: Progress, task: TaskID) -> dict:
    precheck(recipe, source)
    work = out / ".work"
    work.mkdir()
    spec = {"source": source.location, "method": recipe.method.model_dump(mode="json"),
            "calibration": None, "calibration_file": None, "out_dir": str(out)}
    if recipe.calibration:
        spec["calibration"] = recipe.calibration.model_dump(mode="json")
        spec["calibration_file"] = str(work / "calibration.jsonl")
        write_calibration(recipe.calibration, work / "calibration.jsonl")
    (work / "spec.json").write_text(json.dumps(spec))
    autoawq = recipe.method.kind == "awq" and getattr(recipe.method, "backend", None) == "autoawq"
    env, module = ("autoawq", "quantkit.workers.autoawq_quantize") if autoawq else \
        ("compressor", "quantkit.workers.compress")
    progress.update(task, status=f"{'AutoAWQ' if autoawq else 'llm-compressor oneshot'} ({recipe.method.kind})")
    log = paths.cache_dir() / "logs" / f"build-{recipe.name}.log"
    # a recipe the worker finds unworkable ends it with a structured error line: run_worker raises it
    # as a ConfigError naming the field (quantkit.workers.contract.fail)
    result = run_worker(env, module, [work / "spec.json"], log, progress=progress, task=task)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    config = json.loads((out / "config.json").read_text())
    params = result["source_parameters"]
    size = safetensors_info.tensor_bytes(out)
    calibration = {"calibration_samples_used": 0, "calibration_tokens": 0}
    if recipe.calibration:
        if not result.get("calibration"):
            raise QuantkitError(f"{module} did not report its packed calibration; see {log}")
        calibration = calibration_record(recipe.calibration, result["calibration"])
    spec_of = registry.for_method(recipe.method)
    return {
        "format": spec_of.format_of(recipe.method),
        "engine": spec_of.engine(recipe.method).name,
        "quantization_config": config.get("quantization_config"),
        **calibration,
        "worker": result,
        # where it ran and the choices made for that device (CPU: float32 calibration, saved in the
        # checkpoint's dtype; 8 sequences a batch; AWQ grid of 10; see workers/cpu_compat.py)
        "build_settings": {k: result.get(k) for k in
                           ("device", "torch_threads", "calibration_dtype", "saved_dtype", "awq_n_grid")},
        "peak_gpu_memory_mib": result.get("peak_gpu_mib"),
        "tool_versions": result["versions"],
        "tensor_dtypes": safetensors_info.dtype_counts(out),
        "weights_bytes": size,
        "size_on_disk_bytes": folder_bytes(out),
        "source_parameters": params,
        "bits_per_weight": round(8 * size / params, 3) if params else None,
    }
