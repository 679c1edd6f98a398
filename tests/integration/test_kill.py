"""Issue 12 item 8: `kill -9` of quantkit leaves no engine process behind.

quantkit is killed with SIGKILL (the process alone, as a user's `kill -9 PID` does; no handler
runs) at seeded random points of `build`, `compare` and `serve`, on llama.cpp (GGUF) and on vLLM.
Within 10 s no process of that run may remain, found two ways: the QUANTKIT_RUN_ID marker that
every engine process inherits (read from /proc/PID/environ), and the pids of quantkit's whole
process tree recorded just before the kill. The results store must pass `pragma integrity_check`
with every row committed before the kill kept unchanged, and the shared memory the tree had mapped
(/dev/shm) must be unlinked.

Each random point is anchored to an event (an engine process exists, a server is starting) plus
a seeded random delay, so that every kill lands while engine processes are alive: a kill that
found nothing to orphan would prove nothing. QUANTKIT_KILL_SEED changes the points.

The default run kills each command on each engine once or twice: serve (llama.cpp starting and
serving, vLLM starting), build (GGUF Q8_0 converting and quantizing, INT8 W8A8 in llm-compressor),
compare (vLLM starting the reference's engine, llama-server in the llama.cpp phase). The tests
marked `slow` add points that first need long measurements: a vLLM server killed once ready, and
compares resumed and killed while the vLLM and llama.cpp workers measure.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import suite_recipes

from quantkit import builders, paths, sources
from quantkit.execution import procs
from quantkit.execution.supervisor import descendants
from quantkit.recipes import load_recipe
from quantkit.server import free_port

SEED = int(os.environ.get("QUANTKIT_KILL_SEED", "8"))
CLEAN_WITHIN_S = 10.0
Q8 = "smollm2-gguf-q8_0"
VLLM_OPTS = ["-o", "max_model_len=1024", "-o", "gpu_memory_utilization=0.15"]  # 3.5 of 23.5 GiB: model + KV
_markers: list[str] = []


def _rng(name: str) -> random.Random:
    """Each test's own seeded stream: its points do not depend on which tests ran before it."""
    return random.Random(f"{SEED}:{name}")


@pytest.fixture(autouse=True)
def _no_strays():
    """Whatever a failing test leaves running is killed, so that it cannot load the shared machine."""
    yield
    for marker in _markers:
        for pid in procs.marked_processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Run:
    """One `quantkit ...` process, with its own marker and output file."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str] | None = None):
        self.marker = f"killtest-{uuid.uuid4().hex[:12]}"
        _markers.append(self.marker)
        self.out = tmp_path / f"quantkit-{self.marker}.out"
        self.args = args
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "quantkit.cli", *args],
                env={**os.environ, **(env or {}), procs.RUN_ID_VAR: self.marker},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def engine(self) -> dict[str, list[int]]:
        """The live engine tree: supervisors, the commands they run, and those commands' own children."""
        marked = set(procs.marked_processes(self.marker)) - {self.proc.pid}
        sups = [p for p in marked if "supervisor.py" in _cmdline(p)]
        tree = {"supervisors": sups, "commands": [], "helpers": [], "all": sorted(marked)}
        for s in sups:
            below = descendants(s)
            direct = [p for p in below if _ppid(p) == s]
            tree["commands"] += direct
            tree["helpers"] += [p for p in below if p not in direct]
        return tree

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float) -> float:
        started = time.monotonic()
        while not ready():
            assert self.proc.poll() is None, f"quantkit {' '.join(self.args)} ended before {what}:\n{self.output()}"
            assert time.monotonic() - started < timeout, f"no {what} after {timeout:.0f} s:\n{self.output()}"
            time.sleep(0.1)
        return time.monotonic() - started

    def kill9_and_check(self, db: Path | None = None) -> dict:
        """SIGKILL quantkit alone; everything it started must be gone within CLEAN_WITHIN_S."""
        rows = _rows(db) if db else {}
        tree = descendants(self.proc.pid)
        engine = self.engine()
        segments = _shared_memory(set(tree) | set(engine["all"]))
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        started = time.monotonic()
        left = tree + engine["all"]
        while time.monotonic() - started < CLEAN_WITHIN_S:
            left = sorted(set(procs.marked_processes(self.marker)) | {p for p in tree if _alive(p)})
            if not left:
                break
            time.sleep(0.1)
        gone_after = time.monotonic() - started
        assert not left, (f"{len(left)} processes of `quantkit {' '.join(self.args)}` outlived it by "
                          f"{CLEAN_WITHIN_S:.0f} s: " + "; ".join(f"{p}: {_cmdline(p)[:120]}" for p in left))
        leaked = [s for s in segments if os.path.exists(s)]
        assert not leaked, f"shared memory of the killed tree left in /dev/shm: {leaked}"
        if db is not None and db.exists():
            with contextlib.closing(sqlite3.connect(db)) as c:
                assert c.execute("pragma integrity_check").fetchall() == [("ok",)]
            after = _rows(db)
            lost = {k: v for k, v in rows.items() if after.get(k) != v}
            assert not lost, f"rows committed before the kill were lost or changed: {sorted(lost)[:5]}"
        return {"processes": len(set(tree) | set(engine["all"])), "helpers": len(engine["helpers"]),
                "shm_segments": len(segments), "clean_s": round(gone_after, 2), "rows": len(rows)}


def _shared_memory(pids) -> set[str]:
    """POSIX shared memory segments (/dev/shm) mapped by any of `pids`."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                found |= {line.split(None, 5)[5].strip() for line in f
                          if " /dev/shm/" in line and "(deleted)" not in line}
        except (OSError, IndexError):
            pass
    return found


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rfind(b")") + 2:].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def _rows(db: Path) -> dict[int, tuple]:
    """Every committed row, ok or failed, by id."""
    if not db.exists():
        return {}
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as c:
        try:
            return {r[0]: r[1:] for r in c.execute("SELECT id, key, status, value, measured_at FROM figures")}
        except sqlite3.OperationalError:  # the table is not created yet
            return {}


# vLLM's own engine processes (EngineCore and its multiprocessing resource tracker, then the
# Worker): what a killed quantkit used to orphan. Other children come and go during start-up
# (one-shot probes that live milliseconds), so any child at all is no anchor for a kill point.
VLLM_HELPERS = "multiprocessing"


def _engine_up(run: Run, needle: str | None = None, helpers: str | None = None) -> Callable[[], bool]:
    """A command whose command line holds `needle` is running (and, with `helpers`, has a child or
    grandchild whose command line holds that)."""
    def ready() -> bool:
        tree = run.engine()
        cmds = [p for p in tree["commands"] if needle is None or needle in _cmdline(p)]
        return bool(cmds) and (helpers is None or any(helpers in _cmdline(p) for p in tree["helpers"]))
    return ready


def _sleep_while(delay: float, alive: Callable[[], bool]) -> float:
    """Sleep `delay` s, or less if the anchoring engine goes away first (the kill must find it)."""
    end = time.monotonic() + delay
    while time.monotonic() < end and alive():
        time.sleep(0.1)
    return delay - max(0.0, end - time.monotonic())


def _printed(run: Run, text: str) -> Callable[[], bool]:
    return lambda: text in run.output()


def _report(record_property, name: str, point: str, delay: float, result: dict) -> None:
    record_property(f"{name}:{point}", {"seed": SEED, "delay_s": round(delay, 2), **result})
    print(f"{name} killed at {point} + {delay:.2f} s: {result}")


@pytest.fixture(scope="module")
def q8_variant(reference):
    v, _ = builders.build(load_recipe(paths.recipes_dir() / "smollm2_gguf_q8_0.yaml"))
    return v.name


@pytest.fixture
def private_models(reference, tmp_path):
    """A models folder of its own (the reference linked in), so killed builds touch nobody's variants."""
    models = tmp_path / "models"
    (models / "reference").mkdir(parents=True)
    (models / "reference" / sources.EMBEDDED_NAME).symlink_to(reference.location)
    return {"QUANTKIT_MODELS": str(models)}, models / "variants"


def _no_half_variant(variants: Path, name: str) -> None:
    """A build killed at any point leaves either nothing or a complete variant under its name."""
    v = variants / name
    assert not v.exists() or (v / "quantkit-variant.json").exists()


# --- serve ------------------------------------------------------------------------------------

def test_serve_llamacpp_killed_while_starting_and_while_serving(q8_variant, tmp_path, record_property):
    rng = _rng("serve-llamacpp")
    for point in ("starting", "serving"):
        run = Run(["serve", q8_variant, "--port", str(free_port())], tmp_path)
        run.wait_for("llama-server", _engine_up(run, "llama-server"), 120)
        if point == "serving":
            run.wait_for("a ready server", _printed(run, "ready"), 120)
        delay = rng.uniform(0, 1.0 if point == "starting" else 3.0)
        time.sleep(delay)
        _report(record_property, "serve llama.cpp", point, delay, run.kill9_and_check())


def test_serve_vllm_killed_while_starting(reference, tmp_path, record_property):
    """The issue's case: vLLM's api_server has started its EngineCore when quantkit is killed."""
    rng = _rng("serve-vllm")
    run = Run(["serve", "reference", "--port", str(free_port()), *VLLM_OPTS], tmp_path)
    up = _engine_up(run, "api_server", helpers=VLLM_HELPERS)
    run.wait_for("vLLM's engine processes", up, 600)
    delay = _sleep_while(rng.uniform(0, 8.0), up)
    result = run.kill9_and_check()
    assert result["helpers"] >= 1  # the api_server's children existed: exactly what used to be orphaned
    _report(record_property, "serve vLLM", "starting", delay, result)


@pytest.mark.slow
def test_serve_vllm_killed_while_serving(reference, tmp_path, record_property):
    rng = _rng("serve-vllm-ready")
    run = Run(["serve", "reference", "--port", str(free_port()), *VLLM_OPTS], tmp_path)
    run.wait_for("a ready server", _printed(run, "ready"), 900)
    delay = rng.uniform(0, 3.0)
    time.sleep(delay)
    _report(record_property, "serve vLLM", "serving", delay, run.kill9_and_check())


# --- build ------------------------------------------------------------------------------------

def test_gguf_build_killed_in_each_step(private_models, tmp_path, record_property):
    env, variants = private_models
    rng = _rng("build-gguf")
    recipe = str(paths.recipes_dir() / "smollm2_gguf_q8_0.yaml")
    for point, needle in (("convert", "convert_hf_to_gguf"), ("quantize or later", None)):
        run = Run(["build", recipe], tmp_path, env)
        run.wait_for("the converter", _engine_up(run, "convert_hf_to_gguf"), 300)
        if needle is None:  # after the converter: llama-quantize, the inspection worker, or the last writes
            converting = _engine_up(run, "convert_hf_to_gguf")
            run.wait_for("the converter's end", lambda c=converting: not c(), 300)
        delay = rng.uniform(0, 1.0)
        time.sleep(delay)
        _report(record_property, "build GGUF Q8_0", point, delay, run.kill9_and_check())
        _no_half_variant(variants, Q8)


def test_llm_compressor_build_killed_while_quantizing(private_models, tmp_path, record_property):
    """INT8 W8A8 through llm-compressor (its result is served by vLLM): killed inside the worker."""
    env, variants = private_models
    rng = _rng("build-int8")
    run = Run(["build", str(paths.recipes_dir() / "smollm2_int8_w8a8.yaml"), *suite_recipes.cli_overrides("smollm2_int8_w8a8")],
              tmp_path, env)
    up = _engine_up(run, "quantkit.workers.compress")
    run.wait_for("the compressor worker", up, 300)
    delay = _sleep_while(rng.uniform(2.0, 15.0), up)
    _report(record_property, "build INT8 W8A8", "worker", delay, run.kill9_and_check())
    _no_half_variant(variants, "smollm2-int8-w8a8")


# --- compare ----------------------------------------------------------------------------------

COMPARE = ["--quick"]


@pytest.fixture(scope="module")
def compare_db(tmp_path_factory):
    return tmp_path_factory.mktemp("kill-results") / "results.sqlite"


def test_compare_killed_while_vllm_measures_the_reference(q8_variant, compare_db, tmp_path, record_property):
    """The reference is measured on vLLM first (one worker: the serving sweep through the server it
    serves, then the offline groups)."""
    rng = _rng("compare-vllm")
    run = Run(["compare", q8_variant, *COMPARE, "--db", str(compare_db)], tmp_path)
    up = _engine_up(run, "vllm", helpers=VLLM_HELPERS)
    run.wait_for("vLLM's engine processes", up, 1200)
    delay = _sleep_while(rng.uniform(0, 20.0), up)
    result = run.kill9_and_check(compare_db)
    assert result["helpers"] >= 1
    _report(record_property, "compare vLLM", "engine", delay, result)


@pytest.mark.slow
def test_compare_resumed_and_killed_while_vllm_worker_measures(q8_variant, compare_db, tmp_path, record_property):
    rng = _rng("compare-vllm-worker")
    run = Run(["compare", q8_variant, *COMPARE, "--db", str(compare_db)], tmp_path)
    up = _engine_up(run, "quantkit.engines.vllm.worker", helpers=VLLM_HELPERS)
    run.wait_for("vLLM's worker engine", up, 1800)
    delay = _sleep_while(rng.uniform(0, 20.0), up)
    result = run.kill9_and_check(compare_db)
    assert result["helpers"] >= 1
    _report(record_property, "compare vLLM", "worker", delay, result)


# A setting only llama.cpp knows (`n_threads`) makes the vLLM reference fail to load at once (its
# failure is recorded), so compare reaches its llama.cpp phase in seconds rather than after the
# reference's whole measurement (over 30 minutes on 2 cores shared with other engine runs).
LLAMACPP_ONLY = ["-o", "n_threads=2"]


@pytest.fixture(scope="module")
def llamacpp_compare_db(tmp_path_factory):
    return tmp_path_factory.mktemp("kill-results-llamacpp") / "results.sqlite"


def test_compare_killed_while_llamacpp_serves(q8_variant, llamacpp_compare_db, tmp_path, record_property):
    rng = _rng("compare-llamacpp-server")
    db = llamacpp_compare_db
    run = Run(["compare", q8_variant, *COMPARE, "--db", str(db), *LLAMACPP_ONLY], tmp_path)
    up = _engine_up(run, "llama-server")
    run.wait_for("llama-server", up, 900)
    delay = _sleep_while(rng.uniform(0, 5.0), up)
    result = run.kill9_and_check(db)
    assert result["rows"] > 0  # at least the reference's failure row was committed, and must survive
    _report(record_property, "compare llama.cpp", "llama-server", delay, result)


@pytest.mark.slow
def test_compare_resumed_and_killed_while_llamacpp_worker_measures(q8_variant, llamacpp_compare_db, tmp_path,
                                                                   record_property):
    """After the serving sweep (llama-server) has run in full: minutes on a quiet machine, over 15
    on a loaded one."""
    rng = _rng("compare-llamacpp-worker")
    db = llamacpp_compare_db
    run = Run(["compare", q8_variant, *COMPARE, "--db", str(db), *LLAMACPP_ONLY], tmp_path)
    up = _engine_up(run, "quantkit.engines.llamacpp.worker")
    run.wait_for("the llama.cpp worker", up, 3600)
    delay = _sleep_while(rng.uniform(0, 10.0), up)
    result = run.kill9_and_check(db)
    assert result["rows"] > 0
    _report(record_property, "compare llama.cpp", "worker", delay, result)
