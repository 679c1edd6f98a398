"""An engine's own OpenAI-compatible server, started in its env, watched until healthy, stopped cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from quantkit import paths
from quantkit.envs.manager import runtime_env
from quantkit.errors import ConfigError, EngineError
from quantkit.execution.procs import Supervised, stop_tree
from quantkit.execution.worker_client import log_tail
from quantkit.loader import Target


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EngineServer:
    """`with EngineServer(target, port=...) as srv: srv.url` — the server's process tree dies on exit,
    and with quantkit (it runs supervised: see quantkit/execution/supervisor.py)."""

    def __init__(self, target: Target, *, host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout: float = 900, log_path: Path | None = None, cpus: list[int] | None = None,
                 env: dict[str, str] | None = None):
        """`cpus`: pin the server to these cores (taskset); `env`: extra environment variables."""
        self.target, self.host = target, host
        self.cpus, self.extra_env = cpus, dict(env or {})
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self.log_path = log_path or paths.cache_dir() / "logs" / \
            f"{time.strftime('%Y%m%d-%H%M%S')}-serve-{target.engine.name}-{target.name}-{self.port}.log"
        self.proc: Supervised | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return self.target.name

    def start(self) -> EngineServer:
        if not port_is_free(self.host, self.port):
            raise ConfigError(f"port {self.port} on {self.host} is already in use",
                              hint="pick another with --port, or stop what is listening there")
        cmd = self.target.engine.server_command(self.target.model_path, self.model_name, self.target.settings,
                                                self.host, self.port)
        if self.cpus:
            cmd = ["taskset", "-c", ",".join(str(c) for c in self.cpus), *cmd]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w", encoding="utf-8")
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        self.proc = Supervised(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**runtime_env(self.target.engine.env), **self.extra_env})
        log.close()
        try:
            self._wait_healthy()
        except BaseException:  # Ctrl-C during start-up too: `with` calls no __exit__ when __enter__ raises
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.time() + self.startup_timeout
        base = f"http://{self.host}:{self.port}"
        assert self.proc is not None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"{self.target.engine.name} server exited (code {self.proc.returncode}) during "
                                  f"start-up; last log lines:\n    {log_tail(self.log_path)}",
                                  hint=f"full log: {self.log_path}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200 and \
                        httpx.get(base + "/v1/models", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise EngineError(f"{self.target.engine.name} server not healthy after {self.startup_timeout:.0f} s; "
                          f"last log lines:\n    {log_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is None:
            return
        # SIGINT first: both servers shut down gracefully on it
        stop_tree(self.proc, ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)))
        self.proc = None

    def __enter__(self) -> EngineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
