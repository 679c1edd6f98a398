"""`quantkit setup`: create whatever is missing, in dependency order, idempotently.

The steps are the data packages, every environment (build tools, then each registered engine's:
quantkit.envs.specs.env_names), the reference model, and the optional environments last (only when
asked for). Nothing here names an engine.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import Progress as _RichProgress
from rich.progress import SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from quantkit import envs, sources
from quantkit.envs import data_packages
from quantkit.envs.specs import env_names, optional_env_names
from quantkit.errors import ConfigError
from quantkit.progress import Progress

Runner = Callable[[_RichProgress, TaskID, bool], object]

# Steps that are not an environment; the reference model is made in the compressor env from the data.
_FIRST: dict[str, Runner] = {"data": lambda p, t, force: data_packages.install(p, t, force=force)}
_AFTER_ENVS: dict[str, Runner] = {"reference": lambda p, t, force: sources.prepare_embedded(p, t, force=force)}


def _engine_step(name: str) -> Runner:
    return lambda progress, task, force: envs.create(envs.spec(name), progress, task, force=force)


def steps() -> tuple[str, ...]:
    """Every step, in order."""
    return (*_FIRST, *env_names(), *_AFTER_ENVS, *optional_env_names())


def optional() -> tuple[str, ...]:
    """Steps run only when asked for."""
    return optional_env_names()


def runners() -> dict[str, Runner]:
    return {**_FIRST, **{n: _engine_step(n) for n in env_names(optional=True)}, **_AFTER_ENVS}


def __getattr__(attr: str) -> object:
    # STEPS, OPTIONAL and RUNNERS, computed from the registries when read
    if attr == "STEPS":
        return steps()
    if attr == "OPTIONAL":
        return optional()
    if attr == "RUNNERS":
        return runners()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def parse_steps(requested: list[str] | None) -> list[str]:
    known, opt = steps(), optional()
    if not requested:
        return [s for s in known if s not in opt]
    names = [n.strip() for item in requested for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown setup step(s): {', '.join(unknown)}", hint=f"choose from: {', '.join(known)}")
    return [s for s in known if s in names]


def run(requested: list[str] | None, force: bool, console: Console) -> None:
    """Run the steps with a live display on a terminal, and timestamped progress lines a log file can
    follow elsewhere (quantkit.progress)."""
    chosen = parse_steps(requested)
    run_step = runners()
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<11}"), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console, transient=False) as progress:
        for step in chosen:
            task = progress.add_task(step, total=1, status="starting")
            run_step[step](progress, task, force)
            progress.update(task, completed=1, status="[green]ready")
