"""A rich Progress that a log file can follow.

rich draws its live progress display only on a terminal; when the output is a file or a pipe
(`quantkit setup > setup.log`, CI, `make demo | tee`) it prints nothing until the end, so a
12-minute environment build looked hung. `Progress` below behaves exactly like rich's on a
terminal; elsewhere it also prints timestamped lines: one when a task starts, a status change at
most every `every` seconds per task (the latest status wins, so a fast stream of pip or compiler
output does not flood the log), a heartbeat with the elapsed time when a task has been quiet for
`heartbeat` seconds, and one when a task completes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import render
from rich.progress import Progress as _RichProgress
from rich.progress import TaskID


@dataclass
class _Line:
    name: str
    started: float
    status: str = ""
    printed_status: str = ""
    last_print: float = field(default=0.0)
    done: bool = False


class Progress(_RichProgress):
    def __init__(self, *columns: Any, console: Console | None = None, every: float = 10.0,
                 heartbeat: float = 60.0, clock=time.monotonic, **kwargs: Any):
        super().__init__(*columns, console=console, **kwargs)
        self._lines_on = not self.console.is_terminal
        self._every, self._heartbeat, self._clock = every, heartbeat, clock
        self._tasks_lines: dict[TaskID, _Line] = {}
        self._lock_lines = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- rich's interface -------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if self._lines_on and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="progress-lines", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.flush_lines()
        super().stop()

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task = super().add_task(description, *args, **kwargs)
        if self._lines_on:
            line = _Line(description, self._clock(), str(kwargs.get("status", "")))
            with self._lock_lines:
                self._tasks_lines[task] = line
                self._emit(line, line.status or "started")
        return task

    def update(self, task_id: TaskID, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        if not self._lines_on:
            return
        with self._lock_lines:
            line = self._tasks_lines.get(task_id)
            if line is None or line.done:
                return
            if "status" in kwargs:
                line.status = str(kwargs["status"])
            task = self._tasks[task_id]
            if task.total is not None and task.completed >= task.total:
                line.done = True
                self._emit(line, line.status)
            elif line.status != line.printed_status and self._clock() - line.last_print >= self._every:
                self._emit(line, line.status)

    # -- the lines ----------------------------------------------------------------------------
    def _emit(self, line: _Line, text: str) -> None:
        now = self._clock()
        line.printed_status, line.last_print = line.status, now
        with contextlib.suppress(MarkupError):  # a tool's output line that only looks like markup stays as is
            text = render(text).plain  # statuses may carry rich markup ("[green]ready")
        self.console.print(f"{time.strftime('%H:%M:%S')} {line.name} [{now - line.started:5.0f} s] {text}",
                           markup=False, highlight=False, soft_wrap=True)

    def flush_lines(self) -> None:
        """Print what changed and is due: a pending status after `every` s, a heartbeat after `heartbeat` s."""
        with self._lock_lines:
            now = self._clock()
            for line in self._tasks_lines.values():
                if line.done:
                    continue
                if line.status != line.printed_status and now - line.last_print >= self._every:
                    self._emit(line, line.status)
                elif now - line.last_print >= self._heartbeat:
                    self._emit(line, f"still running: {line.status}")

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self.flush_lines()
