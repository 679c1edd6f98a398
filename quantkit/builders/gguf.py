"""GGUF K-quants with llama.cpp's own tools: convert_hf_to_gguf.py -> (llama-imatrix) -> llama-quantize."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit import paths
from quantkit.builders.common import folder_bytes, write_calibration
from quantkit.builders.gguf_convert import convert_hf_to_gguf
from quantkit.envs import llamacpp_build
from quantkit.envs.manager import runtime_env
from quantkit.envs.run import run_worker
from quantkit.envs.steps import run_logged
from quantkit.hardware import detect
from quantkit.recipes import Recipe
from quantkit.sources import Source, materialize


def inspect(gguf_file: Path, log: Path) -> dict:
    _, gguf_py = llamacpp_build.converter()
    env = runtime_env("llamacpp")
    return run_worker("llamacpp", "quantkit.workers.gguf_inspect", [gguf_file], log,
                      extra_env={"PYTHONPATH": f"{gguf_py}:{env['PYTHONPATH']}"})


def build(recipe: Recipe, source: Source, out: Path, progress: Progress, task: TaskID) -> dict:
    m = recipe.method
    # llama.cpp's converter reads a local checkpoint: a hub source is downloaded first
    source_dir = materialize(source)
    log = paths.cache_dir() / "logs" / f"build-{recipe.name}.log"
    work = out / ".work"
    work.mkdir()
    threads = str(detect().cpu_cores)
    steps: dict[str, float] = {}

    t = time.time()
    progress.update(task, status=f"convert_hf_to_gguf.py -> {m.base_outtype}")
    base = convert_hf_to_gguf(source_dir, work / f"base-{m.base_outtype}.gguf", log, m.base_outtype,
                              progress=progress, task=task)
    steps["convert_seconds"] = round(time.time() - t, 1)

    imatrix_file, n_samples = None, 0
    if m.imatrix:
        t = time.time()
        calib = recipe.calibration
        n_samples = write_calibration(calib, work / "calibration.jsonl")
        text_file = work / "calibration.txt"
        text_file.write_text("\n\n".join(json.loads(line)["text"] for line in
                                         (work / "calibration.jsonl").read_text().splitlines()))
        imatrix_file = work / "imatrix.gguf"
        progress.update(task, status="llama-imatrix")
        run_logged([llamacpp_build.tool("llama-imatrix"), "-m", base, "-f", text_file, "-o", imatrix_file,
                    "-c", str(calib.seq_len), "-t", threads], log, progress=progress, task=task,
                   env=runtime_env("llamacpp"), what="llama-imatrix")
        steps["imatrix_seconds"] = round(time.time() - t, 1)

    t = time.time()
    target = out / f"model-{m.type}.gguf"
    progress.update(task, status=f"llama-quantize {m.type}")
    cmd = [llamacpp_build.tool("llama-quantize")]
    if imatrix_file:
        cmd += ["--imatrix", imatrix_file]
    cmd += [base, target, m.type, threads]
    run_logged(cmd, log, progress=progress, task=task, env=runtime_env("llamacpp"), what="llama-quantize")
    steps["quantize_seconds"] = round(time.time() - t, 1)

    if imatrix_file:
        imatrix_file.rename(out / "imatrix.gguf")
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    info = inspect(target, log)
    return {
        "format": "gguf",
        "engine": "llamacpp",
        "gguf_file": target.name,
        "gguf_type": m.type,
        "imatrix": m.imatrix,
        "calibration_samples_used": n_samples,
        "steps": steps,
        "tool_versions": {"llama.cpp": llamacpp_build.built_info().get("llama_cpp_build"),
                          "llama-cpp-python": llamacpp_build.LLAMA_CPP_PYTHON_VERSION},
        "tensor_types": info["tensor_types"],
        "weights_bytes": info["tensor_bytes"],
        "size_on_disk_bytes": folder_bytes(out),
        "source_parameters": info["parameters"],
        "bits_per_weight": info["bits_per_weight"],
    }
