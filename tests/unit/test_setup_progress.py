"""quantkit.progress: setup's progress reaches a log file, not only a terminal."""

import io

from rich.console import Console
from rich.progress import TextColumn

from quantkit.progress import Progress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _progress(terminal: bool, clock: Clock) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=200)
    p = Progress(TextColumn("{task.description} {task.fields[status]}", markup=False), console=console, every=10, heartbeat=60,
                 clock=clock, auto_refresh=False)
    return p, out


def test_a_log_file_gets_start_throttled_changes_heartbeats_and_completion():
    clock = Clock()
    p, out = _progress(False, clock)
    with p:
        task = p.add_task("vllm", total=1, status="starting")
        for i in range(50):  # a burst of pip output within one second: one line at most
            clock.t += 0.02
            p.update(task, status=f"Collecting package-{i}")
        clock.t += 10
        p.flush_lines()  # the latest status, once the interval has passed
        clock.t += 61
        p.flush_lines()  # quiet for a minute: a heartbeat
        clock.t += 5
        p.update(task, completed=1, status="[green]ready")
        p.update(task, status="ignored after completion")
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    ours = [ln for ln in lines if " vllm [" in ln]
    assert ours[0].endswith("vllm [    0 s] starting"), ours
    assert sum("Collecting" in ln and "still running" not in ln for ln in ours) == 1
    assert "Collecting package-49" in ours[1]
    assert "still running: Collecting package-49" in ours[2] and "[   72 s]" in ours[2]
    assert ours[3].endswith("s] ready") and "[green]" not in ours[3]
    assert len(ours) == 4, ours


def test_a_terminal_gets_rich_display_only():
    clock = Clock()
    p, out = _progress(True, clock)
    with p:
        task = p.add_task("data", total=1, status="starting")
        clock.t += 100
        p.update(task, status="downloading")
        p.flush_lines()
    assert " data [" not in out.getvalue()


def test_tool_output_that_looks_like_markup_is_printed_as_is():
    clock = Clock()
    p, out = _progress(False, clock)
    with p:
        task = p.add_task("llamacpp", total=1, status="starting")
        clock.t += 11
        p.update(task, status="[/broken] tag from a compiler")
    assert "[/broken] tag from a compiler" in out.getvalue()
