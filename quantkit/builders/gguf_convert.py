"""HF checkpoint -> GGUF with llama.cpp's own convert_hf_to_gguf.py (never a hand-made converter).

The converter runs in the `compressor` env (it needs torch, transformers, numpy, sentencepiece)
with the vendored gguf-py first on its path, so it uses the gguf writer of the same llama.cpp
commit as the tools that will read the file.
"""

from __future__ import annotations

from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit.envs import llamacpp_build
from quantkit.envs.manager import python_for, runtime_env
from quantkit.envs.steps import run_logged

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def convert_hf_to_gguf(src_dir: Path, out_file: Path, log: Path, outtype: str = "f16", *,
                       progress: Progress | None = None, task: TaskID | None = None) -> Path:
    script, gguf_py = llamacpp_build.converter()
    env = runtime_env("compressor")
    env["PYTHONPATH"] = f"{gguf_py}:{env['PYTHONPATH']}"
    run_logged([python_for("compressor"), script, src_dir, "--outtype", outtype, "--outfile", out_file],
               log, progress=progress, task=task, env=env, what="convert_hf_to_gguf.py")
    return out_file
