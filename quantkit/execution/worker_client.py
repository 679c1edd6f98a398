"""Core side of the worker protocol: start a worker in its env, call ops, stop it cleanly."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Any, NoReturn

from quantkit.envs.manager import python_for, runtime_env
from quantkit.errors import EngineError
from quantkit.execution.procs import Supervised, stop_tree


def log_tail(log_path: Path, n: int = 20) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return "\n    ".join(line.rstrip() for line in deque(f, maxlen=n))
    except OSError:
        return "(no log)"


# Seconds a worker gets after SIGTERM before SIGKILL: vLLM's AsyncLLM worker shuts its engine down
# on SIGTERM, which unlinks the engine processes' shared memory (/dev/shm); at procs.GRACE_S (3 s)
# that shutdown was cut short on 2 loaded cores and left segments behind (tests/integration/test_kill.py).
WORKER_GRACE_S = 6.0


class WorkerClient:
    """One engine worker process. Its stderr (engine logs) goes to `log_path`."""

    def __init__(self, env: str, module: str, settings: dict, log_path: Path):
        self.env, self.module, self.log_path = env, module, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")
        # supervised: the worker's whole process tree (vLLM's EngineCore...) dies with quantkit;
        # the protocol's stdin/stdout go straight to the worker
        self._proc = Supervised(
            [python_for(env), "-m", module, json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            env=runtime_env(env), grace=WORKER_GRACE_S,
        )
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next_id = 0

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def call(self, op: str, timeout: float | None = 1800, **args: Any) -> Any:
        self._next_id += 1
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"id": self._next_id, "op": op, "args": args}) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died(op)
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise EngineError(f"{self.module}: `{op}` took longer than {timeout:.0f} s; last log lines:\n    "
                              f"{log_tail(self.log_path)}") from None
        if line is None:
            self._died(op)
        answer = json.loads(line)
        if not answer["ok"]:
            raise EngineError(f"{self.module}: `{op}` failed: {answer['error']}\n  log: {self.log_path}")
        return answer["result"]

    def _died(self, op: str) -> NoReturn:
        rc = self._proc.wait(timeout=30)
        raise EngineError(f"the {self.env} engine process exited (code {rc}) during `{op}`; last log lines:\n    "
                          f"{log_tail(self.log_path)}", hint=f"full log: {self.log_path}")

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self, grace: float = 30) -> None:
        """Ask the worker to stop, then make sure its whole process tree is gone."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"id": 0, "op": "shutdown"}) + "\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_tree(self._proc)
        self._log.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
