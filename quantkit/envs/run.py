"""Run a one-shot quantkit worker module inside an engine env and read its JSON answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from rich.progress import Progress, TaskID

from quantkit.envs.manager import python_for, runtime_env
from quantkit.envs.steps import run_logged
from quantkit.errors import EngineError


def run_worker(env: str, module: str, args: Sequence[str | Path], log: Path, *,
               progress: Progress | None = None, task: TaskID | None = None,
               extra_env: dict[str, str] | None = None) -> dict:
    """`python -m module args...` in env `env`; the worker's last stdout line must be a JSON object."""
    py = python_for(env)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0
    run_logged([py, "-m", module, *map(str, args)], log, progress=progress, task=task,
               env={**runtime_env(env), **(extra_env or {})}, what=f"{module} in the {env} env")
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        lines = f.read().splitlines()
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise EngineError(f"{module} finished without its JSON result; see {log}")
