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
from quantkit.envs.specs import REQUIREMENTS_DIR, EnvSpec, spec
from quantkit.envs.steps import run_logged
from quantkit.errors import ConfigError, EngineMissingError, QuantkitError
from quantkit.hardware import detect

MARKER = ".quantkit-ready.json"
EXTRAS_MARKER = ".quantkit-extras.json"


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


def native_build(s: EnvSpec):
    """The module of the env's native build (EnvSpec.native_build), or None."""
    if not s.native_build:
        return None
    import importlib

    return importlib.import_module(s.native_build)


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
    fix = f"quantkit setup --engines {s.name}"
    if s.external:
        return _external_status(s, probe=probe)
    path = env_dir(s.name)
    marker = read_marker(s.name)
    if marker is None:
        problem = "not created" if not path.exists() else "incomplete (creation did not finish)"
        return EnvStatus(s.name, path, False, problem=problem, fix=fix)
    if marker.get("requirements_hash") != requirements_hash(s):
        return EnvStatus(s.name, path, False, marker.get("versions", {}),
                         problem=f"requirements changed since creation ({s.requirements})", fix=fix)
    build = native_build(s)
    if build is not None and not build.is_built():
        return EnvStatus(s.name, path, False, marker.get("versions", {}),
                         problem=f"{build.WHAT} is not built", fix=fix)
    versions = marker.get("versions", {})
    if probe:
        try:
            versions = _probe(s)
        except ProbeFailed as e:
            return EnvStatus(s.name, path, False, versions, problem=str(e), fix=f"{fix} --force")
    return EnvStatus(s.name, path, True, versions)


def _external_status(s: EnvSpec, *, probe: bool) -> EnvStatus:
    """An env that is an existing interpreter: ready when it exists (and, probed, imports its module)."""
    assert s.python is not None
    py = Path(s.python)
    if not py.exists():
        return EnvStatus(s.name, py, False, problem=f"interpreter {py} does not exist",
                         fix=f"install {s.name} at {py}")
    versions: dict[str, str | None] = {}
    if probe:
        try:
            versions = _probe(s)
        except ProbeFailed as e:
            return EnvStatus(s.name, py, False, problem=str(e), fix=f"install {s.import_check} for {py}")
    return EnvStatus(s.name, py, True, versions)


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
        [str(Path(s.python) if s.python else _python(env_dir(s.name))), "-c", _PROBE, s.import_check, *s.versions_of],
        check=False, capture_output=True, text=True, timeout=300, env=runtime_env(s.name),
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ProbeFailed(f"`import {s.import_check}` fails: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def runtime_env(name: str) -> dict[str, str]:
    """Environment variables for any process that runs inside env `name` (its EnvSpec adds its own)."""
    import os

    try:
        s: EnvSpec | None = spec(name, detect())
    except ConfigError:  # not an env quantkit knows, or one this hardware cannot have
        s = None
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(paths.REPO_ROOT)  # lets the env import quantkit's worker modules
    if s is None or not s.external:
        env["VIRTUAL_ENV"] = str(env_dir(name))
        env["PATH"] = f"{env_dir(name) / 'bin'}:{env.get('PATH', '')}"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if s is None:
        return env
    env.update(s.env_vars)
    for key, value in s.env_defaults.items():
        env.setdefault(key, value)  # what the user set wins
    preload = preload_libs(s) if not (s.preload_switch and os.environ.get(s.preload_switch, "1") == "0") else []
    if preload:
        env["LD_PRELOAD"] = ":".join([*map(str, preload), *filter(None, [env.get("LD_PRELOAD")])])
    return env


def preload_libs(s: EnvSpec) -> list[Path]:
    """Libraries to LD_PRELOAD for env `s` (EnvSpec.preload, in order), those present in its lib/
    (installed by ensure_extras; whichever is missing is left out)."""
    lib = env_dir(s.name) / "lib"
    if not s.preload or not lib.is_dir():
        return []
    return [lib / name for name in s.preload if (lib / name).exists()]


def python_for(name: str) -> Path:
    """The interpreter of a ready env, or an error saying how to create it."""
    s = spec(name)
    st = status(s)
    if not st.ready:
        raise EngineMissingError(
            f"the {name} engine environment is not ready: {st.problem}", hint=f"run `{st.fix}`"
        )
    return Path(s.python) if s.python else _python(env_dir(name))


def extras_hash(s: EnvSpec) -> str:
    text = (REQUIREMENTS_DIR / s.extras).read_text(encoding="utf-8") if s.extras else ""
    return hashlib.sha256(json.dumps([text, list(s.debian_libs)]).encode()).hexdigest()[:16]


def read_extras(name: str) -> dict | None:
    try:
        return json.loads((env_dir(name) / EXTRAS_MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_extras(s: EnvSpec, progress: Progress, task: TaskID, *, force: bool = False) -> dict:
    """Install the env's optional runtime libraries (EnvSpec.extras, EnvSpec.debian_libs) once.

    They make the engine faster but are not needed for it to run, so a failure (no apt-get, no
    package lists, no network) is recorded in the extras marker with its reason and setup goes on;
    runtime_env preloads whatever is there."""
    if not s.extras and not s.debian_libs:
        return {}
    marker = read_extras(s.name)
    if not force and marker and marker.get("hash") == extras_hash(s):
        return marker
    path, log = env_dir(s.name), paths.envs_dir() / f"{s.name}.log"
    result: dict = {"hash": extras_hash(s), "installed": [], "missing": {}}
    if s.extras:
        progress.update(task, status=f"installing {s.extras}")
        try:
            run_logged([_python(path), "-m", "pip", "install", "--progress-bar", "off", "-r", REQUIREMENTS_DIR / s.extras],
                       log, progress=progress, task=task, what=f"install of {s.extras}")
            result["installed"].append(s.extras)
        except QuantkitError as e:
            result["missing"][s.extras] = e.args[0].splitlines()[0]
    for package, pattern in s.debian_libs:
        progress.update(task, status=f"unpacking {package} (Debian) into the env")
        try:
            result["installed"] += [f.name for f in unpack_debian_lib(package, pattern, path / "lib", log)]
        except QuantkitError as e:
            result["missing"][package] = e.args[0].splitlines()[0]
    (path / EXTRAS_MARKER).write_text(json.dumps(result, indent=2))
    return result


def unpack_debian_lib(package: str, pattern: str, dest: Path, log: Path) -> list[Path]:
    """The shared libraries matching `pattern` from Debian package `package`, copied into `dest`:
    `apt-get download` (needs no root) and `dpkg-deb -x` into a temporary folder, nothing installed
    system-wide. Symlinks are kept as symlinks."""
    import tempfile

    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise QuantkitError(f"{package}: apt-get and dpkg-deb are needed to fetch it (not a Debian-based system)")
    with tempfile.TemporaryDirectory() as tmp:
        run_logged(["apt-get", "download", package], log, cwd=Path(tmp), what=f"apt-get download {package}")
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise QuantkitError(f"{package}: apt-get download left no .deb")
        run_logged(["dpkg-deb", "-x", debs[0], Path(tmp) / "x"], log, what=f"dpkg-deb -x {debs[0].name}")
        found = sorted((Path(tmp) / "x").rglob(pattern))
        if not found:
            raise QuantkitError(f"{package}: no file matching {pattern} in the package")
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for f in found:
            target = dest / f.name
            if target.is_symlink() or target.exists():
                target.unlink()
            shutil.copy2(f, target, follow_symlinks=False)
            out.append(target)
        return out


def create(s: EnvSpec, progress: Progress, task: TaskID, *, force: bool = False) -> EnvStatus:
    """Create env `s` unless it is ready already, then its optional extras. Idempotent; `force` rebuilds it."""
    if s.external:
        st = status(s, probe=True)
        if not st.ready:
            raise EngineMissingError(f"{s.name}: {st.problem}", hint=st.fix)
        progress.update(task, status=f"uses {s.python}")
        return st
    if not force and status(s).ready:
        progress.update(task, status="already ready")
        extras = ensure_extras(s, progress, task)
        if extras.get("missing"):
            progress.update(task, status=f"ready; without {', '.join(extras['missing'])} (see {s.name}.log)")
        return status(s)
    path = env_dir(s.name)
    log = paths.envs_dir() / f"{s.name}.log"
    t0 = time.time()
    build = native_build(s)
    if build is not None:
        build.build(progress, task)
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
    if build is not None:
        marker[build.MARKER_KEY] = build.built_info()
    (path / MARKER).write_text(json.dumps(marker, indent=2))
    ensure_extras(s, progress, task, force=True)
    return status(s)
