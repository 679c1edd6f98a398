"""GGUF K-quants with llama.cpp's own tools: convert_hf_to_gguf.py -> (llama-imatrix) -> llama-quantize."""

from __future__ import annotations

import re
import time
from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit import paths
from quantkit.builders.common import calibration_record, folder_bytes, write_calibration
from quantkit.builders.gguf_convert import convert_hf_to_gguf
from quantkit.engines import registry
from quantkit.envs import llamacpp_build
from quantkit.envs.manager import runtime_env
from quantkit.envs.run import run_worker
from quantkit.envs.steps import run_logged
from quantkit.errors import EngineError
from quantkit.hardware import detect
from quantkit.recipes import GgufMethod, Recipe
from quantkit.sources import Source, materialize


def inspect(gguf_file: Path, log: Path) -> dict:
    _, gguf_py = llamacpp_build.converter()
    env = runtime_env("llamacpp")
    return run_worker("llamacpp", "quantkit.workers.gguf_inspect", [gguf_file], log,
                      extra_env={"PYTHONPATH": f"{gguf_py}:{env['PYTHONPATH']}"})


def _chunks_computed(log: Path, start: int) -> int:
    """The chunk count llama-imatrix printed ("computing over N chunks, n_ctx=...") in its run."""
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        found = re.findall(r"computing over (\d+) chunks", f.read())
    if not found:
        raise EngineError(f"llama-imatrix did not say how many chunks it computed; see {log}")
    return int(found[-1])


def imatrix(recipe: Recipe, source_dir: Path, base: Path, out_file: Path, work: Path, log: Path, threads: str,
            progress: Progress, task: TaskID) -> dict:
    """llama-imatrix over exactly calibration.samples chunks of seq_len tokens.

    llama-imatrix tokenizes its text file itself and cuts it into -c sized chunks. The text is the
    same packed passages the llm-compressor builds use (quantkit.calibration, with the reference
    tokenizer), with one spare chunk, and --chunks stops it at `samples`; its log says how many
    chunks it computed, which must be `samples`.
    """
    calib = recipe.calibration
    assert calib is not None  # recipes check that imatrix has a calibration section
    write_calibration(calib, work / "calibration.jsonl")
    text_file = work / "calibration.txt"
    progress.update(task, status="packing calibration text")
    # too little text ends the worker with a structured error line: run_worker raises a ConfigError
    packed = run_worker("compressor", "quantkit.calibration",
                        [source_dir, work / "calibration.jsonl", str(calib.samples), str(calib.seq_len), text_file],
                        log, progress=progress, task=task)
    progress.update(task, status="llama-imatrix")
    start = log.stat().st_size
    run_logged([llamacpp_build.tool("llama-imatrix"), "-m", base, "-f", text_file, "-o", out_file,
                "-c", str(calib.seq_len), "--chunks", str(calib.samples), "-t", threads], log,
               progress=progress, task=task, env=runtime_env("llamacpp"), what="llama-imatrix")
    chunks = _chunks_computed(log, start)
    return calibration_record(calib, {**packed, "sequences": chunks, "tokens": chunks * calib.seq_len,
                                      "tokenized_by": "llama-imatrix (the GGUF's tokenizer) over the packed text"})


def build(recipe: Recipe, source: Source, out: Path, progress: Progress, task: TaskID) -> dict:
    m = recipe.method
    assert isinstance(m, GgufMethod)
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

    imatrix_file, calibration = None, {"calibration_samples_used": 0, "calibration_tokens": 0}
    if m.imatrix:
        t = time.time()
        imatrix_file = work / "imatrix.gguf"
        calibration = imatrix(recipe, source_dir, base, imatrix_file, work, log, threads, progress, task)
        steps["imatrix_seconds"] = round(time.time() - t, 1)

    t = time.time()
    target = out / f"model-{m.type}.gguf"
    progress.update(task, status=f"llama-quantize {m.type}")
    cmd: list[str | Path] = [llamacpp_build.tool("llama-quantize")]
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
        "engine": registry.for_format("gguf").name,
        "gguf_file": target.name,
        "gguf_type": m.type,
        "imatrix": m.imatrix,
        **calibration,
        "steps": steps,
        "tool_versions": {"llama.cpp": llamacpp_build.built_info().get("llama_cpp_build"),
                          "llama-cpp-python": llamacpp_build.LLAMA_CPP_PYTHON_VERSION},
        "tensor_types": info["tensor_types"],
        "weights_bytes": info["tensor_bytes"],
        "size_on_disk_bytes": folder_bytes(out),
        "source_parameters": info["parameters"],
        "bits_per_weight": info["bits_per_weight"],
    }
