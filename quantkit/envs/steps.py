"""Run a long shell step with its output in a log file and a live rich status line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit.errors import QuantkitError
from quantkit.execution.procs import Supervised, stop_tree

_peak_trackers: list[dict] = []


@contextlib.contextmanager
def track_peak_rss():
    """Collect the largest resident set (MiB) of every step run inside the block: {"mib": N}."""
    tracker = {"mib": 0}
    _peak_trackers.append(tracker)
    try:
        yield tracker
    finally:
        _peak_trackers.remove(tracker)


def run_logged(
    cmd: Sequence[str | os.PathLike],
    log_path: Path,
    *,
    progress: Progress | None = None,
    task: TaskID | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    what: str = "step",
) -> None:
    """Run `cmd`, append its output to `log_path`, show its last line; raise with the tail on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=25)
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(map(str, cmd))}\n")
        log.flush()
        # supervised: the step's whole process tree dies with quantkit (see execution/supervisor.py)
        proc = Supervised(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=full_env, cwd=cwd, text=True, errors="replace", bufsize=1,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()  # the log can be followed (tail -f) while the step runs
                stripped = line.strip()
                if stripped:
                    tail.append(stripped)
                    if progress is not None and task is not None:
                        progress.update(task, status=stripped[:90])
            # wait4 gives this child's own peak RSS (ru_maxrss, KiB), unlike RUSAGE_CHILDREN's running
            # max; the supervisor's figure includes the command's (and its reaped descendants')
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C, SIGTERM: the step's tree does not outlive it
            stop_tree(proc, ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))
            raise
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc
    for tracker in _peak_trackers:
        tracker["mib"] = max(tracker["mib"], round(usage.ru_maxrss / 1024))
    if rc != 0:
        last = "\n    ".join(tail)
        raise QuantkitError(
            f"{what} failed (exit {rc}); last lines of {log_path}:\n    {last}",
            hint=f"read the full log at {log_path}; re-run the same command to retry",
        )
