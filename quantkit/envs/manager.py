"""Create, locate and inspect the engine environments under $QUANTKIT_HOME/envs/<name>.

An environment counts as ready only once its marker file exists, written as the very last step
of a successful creation and holding the hash of the requirement file it was built from. A
creation that dies leaves no marker, and the next `quantkit setup` starts that env afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit import paths
from quantkit.envs import llamacpp_build
from quantkit.envs.specs import EnvSpec, spec
from quantkit.envs.steps import run_logged
from quantkit.errors import EngineMissingError

MARKER = ".quantkit-ready.json"


@dataclass
class EnvStatus:
    name: str
    path: Path
    ready: bool
    versions: dict[str, str | None] = field(default_factory=dict)
    problem: str | None = None
    fix: str | None = None


def env_dir(name: str) -> Path:
    return paths.envs_dir() / name


def _python(path: Path) -> Path:
    return path / "bin" / "python"


def requirements_hash(s: EnvSpec) -> str:
    return hashlib.sha256(s.requirements_text().encode()).hexdigest()[:16]


def read_marker(name: str) -> dict | None:
    marker = env_dir(name) / MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def status(s: EnvSpec, *, probe: bool = False) -> EnvStatus:
    """Is the env ready? With `probe`, also import its main module inside it (slower, certain)."""
    path = env_dir(s.name)
    fix = f"quantkit setup --engines {s.name}"
    marker = read_marker(s.name)
    if marker is None:
        problem = "not created" if not path.exists() else "incomplete (creation did not finish)"
        return EnvStatus(s.name, path, False, problem=problem, fix=fix)
    if marker.get("requirements_hash") != requirements_hash(s):
        return EnvStatus(s.name, path, False, marker.get("versions", {}),
                         problem=f"requirements changed since creation ({s.requirements})", fix=fix)
    if s.needs_llamacpp_build and not llamacpp_build.is_built():
        return EnvStatus(s.name, path, False, marker.get("versions", {}),
                         problem="llama.cpp tools are not built", fix=fix)
    versions = marker.get("versions", {})
    if probe:
        try:
            versions = _probe(s)
        except ProbeFailed as e:
            return EnvStatus(s.name, path, False, versions, problem=str(e), fix=f"{fix} --force")
    return EnvStatus(s.name, path, True, versions)


class ProbeFailed(Exception):
    """The env exists but its main module does not import."""


_PROBE = """
import importlib, importlib.metadata as md, json, sys
importlib.import_module(sys.argv[1])
out = {}
for d in sys.argv[2:]:
    try:
        out[d] = md.version(d)
    except md.PackageNotFoundError:
        out[d] = None
print(json.dumps(out))
"""


def _probe(s: EnvSpec) -> dict[str, str | None]:
    proc = subprocess.run(
        [str(_python(env_dir(s.name))), "-c", _PROBE, s.import_check, *s.versions_of],
        capture_output=True, text=True, timeout=300, env=runtime_env(s.name),
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ProbeFailed(f"`import {s.import_check}` fails: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def runtime_env(name: str) -> dict[str, str]:
    """Environment variables for any process that runs inside engine env `name`."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(paths.REPO_ROOT)  # lets the env import quantkit's worker modules
    env["VIRTUAL_ENV"] = str(env_dir(name))
    env["PATH"] = f"{env_dir(name) / 'bin'}:{env.get('PATH', '')}"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if name == "llamacpp":
        env["LLAMA_CPP_LIB_PATH"] = str(llamacpp_build.bin_dir())
    return env


def python_for(name: str) -> Path:
    """The interpreter of a ready env, or an error saying how to create it."""
    s = spec(name)
    st = status(s)
    if not st.ready:
        raise EngineMissingError(
            f"the {name} engine environment is not ready: {st.problem}", hint=f"run `{st.fix}`"
        )
    return _python(env_dir(name))


def create(s: EnvSpec, progress: Progress, task: TaskID, *, force: bool = False) -> EnvStatus:
    """Create env `s` unless it is ready already. Idempotent; `force` rebuilds it."""
    if not force and status(s).ready:
        progress.update(task, status="already ready")
        return status(s)
    path = env_dir(s.name)
    log = paths.envs_dir() / f"{s.name}.log"
    t0 = time.time()
    if s.needs_llamacpp_build:
        llamacpp_build.build(progress, task)
    if path.exists():
        shutil.rmtree(path)
    progress.update(task, status="creating virtual environment")
    run_logged([sys.executable, "-m", "venv", path], log, progress=progress, task=task, what="venv")
    py = _python(path)
    run_logged([py, "-m", "pip", "install", "--progress-bar", "off", "--upgrade", "pip"], log,
               progress=progress, task=task, what=f"pip upgrade in {s.name}")
    run_logged([py, "-m", "pip", "install", "--progress-bar", "off", "-r", s.requirements_path], log,
               progress=progress, task=task, env=s.pip_env, what=f"install of {s.requirements}")
    if s.remove_after_install:
        run_logged([py, "-m", "pip", "uninstall", "-y", *s.remove_after_install], log,
                   progress=progress, task=task, what=f"removal of {', '.join(s.remove_after_install)}")
    progress.update(task, status=f"checking `import {s.import_check}`")
    try:
        versions = _probe(s)
    except ProbeFailed as e:
        raise EngineMissingError(f"{s.name} env was installed but {e}", hint=f"see {log}") from None
    marker = {
        "requirements": s.requirements, "requirements_hash": requirements_hash(s),
        "versions": versions, "python": sys.version.split()[0],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t0),
    }
    if s.needs_llamacpp_build:
        marker["llama_cpp"] = llamacpp_build.built_info()
    (path / MARKER).write_text(json.dumps(marker, indent=2))
    return status(s)
