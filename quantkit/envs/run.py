"""Run a one-shot quantkit worker module inside an engine env and read its JSON answer.

The worker prints its result as the last JSON object on stdout. When it fails for a reason the
user can fix, it ends with a structured error line on stderr (quantkit.workers.contract.fail:
`{"quantkit_error": {"message", "field", "kind"}}`), raised here as a ConfigError (kind "config")
or an EngineError naming the field; any other failure keeps run_logged's error with the log's tail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit.envs.manager import python_for, runtime_env
from quantkit.envs.steps import run_logged
from quantkit.errors import ConfigError, EngineError, QuantkitError
from quantkit.workers import contract


def _lines_since(log: Path, start: int) -> list[str]:
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        return f.read().splitlines()


def worker_error(lines: list[str], log: Path) -> QuantkitError | None:
    """The worker's structured error among its output lines, as the error to raise (None: there is none)."""
    err = contract.read_error(lines)
    if err is not None:
        field = err.get("field")
        message = f"{field}: {err['message']}" if field else err["message"]
        if err.get("kind", "config") == "config":
            return ConfigError(message)
        return EngineError(message, hint=f"see {log}")
    return None


def run_worker(env: str, module: str, args: Sequence[str | Path], log: Path, *,
               progress: Progress | None = None, task: TaskID | None = None,
               extra_env: dict[str, str] | None = None) -> dict:
    """`python -m module args...` in env `env`; the worker's last stdout line must be a JSON object."""
    py = python_for(env)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0
    try:
        run_logged([py, "-m", module, *map(str, args)], log, progress=progress, task=task,
                   env={**runtime_env(env), **(extra_env or {})}, what=f"{module} in the {env} env")
    except QuantkitError:
        found = worker_error(_lines_since(log, start), log)
        if found is not None:
            raise found from None
        raise
    for line in reversed(_lines_since(log, start)):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if isinstance(result, dict) and contract.ERROR_KEY not in result:
                return result
    raise EngineError(f"{module} finished without its JSON result; see {log}")
