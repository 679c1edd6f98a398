"""`quantkit setup`: create whatever is missing, in dependency order, idempotently."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import Progress as _RichProgress
from rich.progress import SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from quantkit import envs, sources
from quantkit.envs import data_packages
from quantkit.errors import ConfigError
from quantkit.progress import Progress

# Order matters: the reference model is made in the compressor env from the data packages.
STEPS = ("data", "compressor", "llamacpp", "vllm", "reference", "autoawq")
OPTIONAL = ("autoawq",)  # only when asked for: CUDA-only alternative AWQ backend


def _engine_step(name: str) -> Callable[[_RichProgress, TaskID, bool], object]:
    return lambda progress, task, force: envs.create(envs.spec(name), progress, task, force=force)


RUNNERS: dict[str, Callable[[_RichProgress, TaskID, bool], object]] = {
    "data": lambda p, t, force: data_packages.install(p, t, force=force),
    "compressor": _engine_step("compressor"),
    "llamacpp": _engine_step("llamacpp"),
    "vllm": _engine_step("vllm"),
    "reference": lambda p, t, force: sources.prepare_embedded(p, t, force=force),
    "autoawq": _engine_step("autoawq"),
}


def parse_steps(requested: list[str] | None) -> list[str]:
    if not requested:
        return [s for s in STEPS if s not in OPTIONAL]
    names = [n.strip() for item in requested for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ConfigError(f"unknown setup step(s): {', '.join(unknown)}", hint=f"choose from: {', '.join(STEPS)}")
    return [s for s in STEPS if s in names]


def run(requested: list[str] | None, force: bool, console: Console) -> None:
    """Run the steps with a live display on a terminal, and timestamped progress lines a log file can
    follow elsewhere (quantkit.progress)."""
    steps = parse_steps(requested)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<11}"), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console, transient=False) as progress:
        for step in steps:
            task = progress.add_task(step, total=1, status="starting")
            RUNNERS[step](progress, task, force)
            progress.update(task, completed=1, status="[green]ready")
