"""Engine processes whose whole tree dies with quantkit.

Every engine command (worker, server, build step) runs under `supervisor.py`, a small stdlib-only
process that starts the command in its own process group, adopts descendants that escape that
group (it is a child subreaper), and stops the whole tree when quantkit dies, however it dies.
`Supervised` is the `subprocess.Popen` of that supervisor: the command's stdin, stdout and stderr
are the ones given here (the supervisor is not in the data path), its exit status is the
command's, and signals sent through it reach the command's process group.

Every process started this way carries `QUANTKIT_RUN_ID` in its environment, so that what one
quantkit run started can be found in /proc (the kill tests do).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUPERVISOR = Path(__file__).with_name("supervisor.py")
RUN_ID_VAR = "QUANTKIT_RUN_ID"
# SIGTERM to SIGKILL when quantkit dies, or for what outlives the command's own exit. vLLM's
# api_server, SIGTERMed while it starts, had not exited after 5 s: the tree is SIGKILLed then.
GRACE_S = 3.0

# Each step: a signal for the command's process group and how long to wait for the command to exit.
STOP_STEPS = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))


def run_id() -> str:
    """This quantkit run's marker, inherited from the environment or made once per process."""
    if RUN_ID_VAR not in os.environ:
        os.environ[RUN_ID_VAR] = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return os.environ[RUN_ID_VAR]


class Supervised(subprocess.Popen):
    """`subprocess.Popen(cmd, ...)`, with `cmd` run under the supervisor.

    `pid` is the supervisor's; `send_signal`, `terminate` and `kill` reach the command's process
    group (kill: SIGKILL to the whole tree, escaped descendants included)."""

    def __init__(self, cmd: Sequence[str | os.PathLike], *, env: Mapping[str, str] | None = None,
                 grace: float = GRACE_S, **popen_kwargs: Any):
        for key in ("start_new_session", "preexec_fn", "process_group"):
            if key in popen_kwargs:
                raise TypeError(f"Supervised sets {key} itself")
        self.command = [str(c) for c in cmd]
        full_env = dict(os.environ if env is None else env)
        full_env[RUN_ID_VAR] = run_id()
        super().__init__(
            [sys.executable, "-I", "-S", str(SUPERVISOR), str(os.getpid()), str(grace), "--", *self.command],
            env=full_env, start_new_session=True,  # away from quantkit's group: a terminal's Ctrl-C reaches
            **popen_kwargs,                        # quantkit only, which then stops its engines in order
        )

    def send_signal(self, sig: int) -> None:
        # SIGKILL would kill only the supervisor; SIGUSR1 asks it to SIGKILL the whole tree
        super().send_signal(signal.SIGUSR1 if sig == signal.SIGKILL else sig)


def stop_tree(proc: Supervised, steps: Sequence[tuple[int, float]] = STOP_STEPS) -> None:
    """Signal the command's process group step by step until the command has exited (the supervisor
    then stops whatever is left of its tree and exits); SIGKILL in `steps` kills the whole tree."""
    for sig, wait in steps:
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:  # the supervisor itself does not answer: last resort
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def run(cmd: Sequence[str | os.PathLike], *, timeout: float | None = None, check: bool = False,
        input: str | bytes | None = None, capture_output: bool = False,
        **popen_kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run` for engine commands (llama-bench, `vllm bench`): supervised, and the whole
    tree is killed on a timeout or an exception (Ctrl-C included)."""
    if capture_output:
        popen_kwargs["stdout"] = popen_kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        popen_kwargs["stdin"] = subprocess.PIPE
    with Supervised(cmd, **popen_kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            stop_tree(proc, ((signal.SIGKILL, 10.0),))
            raise
    result = subprocess.CompletedProcess(proc.command, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


def terminate_as_interrupt() -> None:
    """Turn SIGTERM into KeyboardInterrupt so that `with` blocks stop their engines on the way out."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment has QUANTKIT_RUN_ID=`marker` (Linux /proc; zombies excluded)."""
    needle = f"{RUN_ID_VAR}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if needle in environ and stat[stat.rfind(b")") + 2:][:1] != b"Z":
            found.append(int(name))
    return found
