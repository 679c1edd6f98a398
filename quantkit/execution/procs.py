"""Child processes that cannot outlive quantkit.

Engine workers and servers run in their own process group (so that stopping one stops all of
its children), which also shields them from a signal sent to quantkit's group. On Linux each is
asked to receive SIGKILL when quantkit dies (prctl PR_SET_PDEATHSIG), so a killed compare or
serve leaves no orphan engine behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` for subprocess.Popen: SIGKILL this child when its parent exits (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def terminate_as_interrupt() -> None:
    """Turn SIGTERM into KeyboardInterrupt so that `with` blocks stop their engines on the way out."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def stop_group(proc: subprocess.Popen, steps=((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))) -> None:
    """Signal `proc`'s process group step by step until the leader exits, then SIGKILL whatever is
    left of the group (engines spawn helpers that may outlive their parent)."""
    for sig, wait in steps:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
