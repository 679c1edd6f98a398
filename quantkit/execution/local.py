"""The local executor: runs engine workers as subprocesses on this machine.

Everything that runs a variant goes through an executor's `start`, so a cluster executor (Ray)
can later implement the same method without the evaluator changing.
"""

from __future__ import annotations

import time
from pathlib import Path

from quantkit import paths
from quantkit.execution.worker_client import WorkerClient
from quantkit.loader import Target


class LocalExecutor:
    # one model at a time: its speed figures are this machine's alone
    parallel_models = 1

    def __init__(self, log_dir: Path | None = None):
        self.log_dir = log_dir or paths.cache_dir() / "logs"

    def start(self, target: Target, *, label: str = "run") -> WorkerClient:
        """Start the engine worker for `target` (see quantkit.loader) and return its client."""
        log = self.log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{target.engine.name}-{target.name}-{label}.log"
        return WorkerClient(target.engine.env, target.engine.worker_module, target.worker_settings(), log)
