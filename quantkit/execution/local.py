"""The local executor: runs engine workers as subprocesses on this machine.

Everything that runs a variant goes through an executor's `start`, so a cluster executor (Ray)
can later implement the same method without the evaluator changing.
"""

from __future__ import annotations

import time
from pathlib import Path

from quantkit import paths
from quantkit.errors import ConfigError
from quantkit.execution.worker_client import WorkerClient

# engine name -> (environment, worker module)
WORKERS = {
    "vllm": ("vllm", "quantkit.engines.vllm.worker"),
    "llamacpp": ("llamacpp", "quantkit.engines.llamacpp.worker"),
}


class LocalExecutor:
    def __init__(self, log_dir: Path | None = None):
        self.log_dir = log_dir or paths.cache_dir() / "logs"

    def start(self, engine: str, settings: dict, *, label: str = "run") -> WorkerClient:
        """Start `engine` with `settings` (engine-native names, incl. `model`); returns a live worker."""
        if engine not in WORKERS:
            raise ConfigError(f"unknown engine {engine!r}", hint=f"choose one of: {', '.join(WORKERS)}")
        env, module = WORKERS[engine]
        log = self.log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{engine}-{label}.log"
        return WorkerClient(env, module, dict(settings), log)
