"""Write a directory all at once: work in a hidden sibling, rename into place only on success."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path


def _writer() -> str:
    """This process as a writer: PID@host, because folders on a shared filesystem (the models of
    a Ray cluster) are written by processes of several machines, whose PIDs only their own
    machine can check."""
    return f"{os.getpid()}@{socket.gethostname()}"


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial-{_writer()}")


@contextlib.contextmanager
def atomic_dir(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a scratch dir; on normal exit it becomes `final`, on any exception it is deleted.

    Ctrl-C (KeyboardInterrupt) and SIGTERM-turned-exceptions take the same path; a SIGKILL leaves
    a hidden `.NAME.partial-PID` folder that listings ignore and `sweep_partials` removes.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(final)
        old = final.with_name(f".{final.name}.old-{_writer()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def sweep_partials(folder: Path) -> list[Path]:
    """Remove leftovers of killed writers of this machine (their PID is gone). A writer of another
    machine (PID@host) is left to that machine's own sweep: its PID means nothing here. Returns
    what was removed."""
    removed: list[Path] = []
    if not folder.exists():
        return removed
    here = socket.gethostname()
    for p in folder.iterdir():
        if p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name):
            marker = p.name.split(".partial-" if ".partial-" in p.name else ".old-", 1)[1]
            pid, _, host = marker.partition("@")  # written before hosts were recorded: this machine's
            if host and host != here:
                continue
            if pid.isdigit() and _alive(int(pid)):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text_atomic(final: Path, text: str) -> None:
    """Write a file all at once: a killed writer leaves the old file (or none), never half of one."""
    tmp = partial_path(final)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, final)
