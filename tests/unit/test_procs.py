"""The supervisor: an engine's whole process tree dies with quantkit, and nothing else changes.

The fake engine below builds the trees that defeat PR_SET_PDEATHSIG: a child in the same group,
one in its own session, a double-forked orphan in its own session, and one that ignores SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from quantkit.envs.steps import run_logged, track_peak_rss
from quantkit.execution import procs

# A fake engine: prints the pids of its tree on stdout, then waits.
TREE = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    sleep = [sys.executable, "-c", "import time; time.sleep(300)"]
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      "print(flush=True); time.sleep(300)"]
    same_group = subprocess.Popen(sleep)
    own_session = subprocess.Popen(sleep, start_new_session=True)
    deaf = subprocess.Popen(stubborn, stdout=subprocess.PIPE, start_new_session=True)
    deaf.stdout.readline()  # SIGTERM is ignored from here on
    r, w = os.pipe()
    if os.fork() == 0:  # double fork: the grandchild is orphaned at once, in a session of its own
        os.setsid()
        pid = os.fork()
        if pid:
            os.write(w, str(pid).encode())
            os._exit(0)
        os.close(w)
        time.sleep(300)
        os._exit(0)
    os.close(w)
    orphan = int(os.read(r, 32))
    print(os.getpid(), same_group.pid, own_session.pid, deaf.pid, orphan, flush=True)
    time.sleep(300)
""")

# quantkit stand-in: starts the fake engine supervised, relays its pids, waits to be killed.
QUANTKIT = textwrap.dedent("""
    import subprocess, sys, time
    from quantkit.execution.procs import Supervised
    proc = Supervised([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True, grace=1.0)
    print(proc.pid, proc.stdout.readline().strip(), flush=True)
    time.sleep(300)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def _wait_gone(pids, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.fixture
def marker(monkeypatch):
    value = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(procs.RUN_ID_VAR, value)
    yield value
    for pid in procs.marked_processes(value):  # never leave a stray behind, even when a test fails
        os.kill(pid, signal.SIGKILL)


def _start_tree(**kwargs) -> tuple[procs.Supervised, list[int]]:
    proc = procs.Supervised([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, **kwargs)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 5 and all(map(_alive, pids))
    return proc, pids


def test_whole_tree_dies_when_quantkit_is_killed(marker):
    quantkit = subprocess.Popen([sys.executable, "-c", QUANTKIT, TREE], stdout=subprocess.PIPE, text=True)
    supervisor, *tree = (int(p) for p in quantkit.stdout.readline().split())
    everything = [supervisor, *tree]
    assert all(map(_alive, everything))
    assert set(everything) <= set(procs.marked_processes(marker))
    os.kill(quantkit.pid, signal.SIGKILL)
    quantkit.wait()
    started = time.monotonic()
    assert _wait_gone(everything) == []
    assert procs.marked_processes(marker) == []
    assert time.monotonic() - started < 5  # poll 0.25 s + 1 s grace for the one that ignores SIGTERM


def test_stop_tree_stops_escaped_descendants_too(marker):
    proc, pids = _start_tree(grace=1.0)
    procs.stop_tree(proc, ((signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)))
    assert proc.returncode == -signal.SIGINT  # the command's own status, as if it were our child
    assert _wait_gone(pids, 0.5) == []
    assert procs.marked_processes(marker) == []


def test_sigkill_step_kills_the_whole_tree_at_once(marker):
    proc, pids = _start_tree(grace=30.0)
    started = time.monotonic()
    proc.kill()
    proc.wait(timeout=10)
    assert time.monotonic() - started < 5  # no grace period for SIGKILL
    assert _wait_gone(pids, 0.5) == []


def test_what_outlives_the_command_is_stopped_when_it_exits(marker):
    spawn_and_exit = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                      "'import time; time.sleep(300)'], start_new_session=True); print(p.pid, flush=True)")
    proc = procs.Supervised([sys.executable, "-c", spawn_and_exit], stdout=subprocess.PIPE, text=True, grace=1.0)
    left_behind = int(proc.stdout.readline())
    assert proc.wait(timeout=10) == 0
    assert _wait_gone([left_behind], 0.5) == []


def test_protocol_pipes_go_straight_to_the_command(marker):
    echo = "import sys\nfor line in sys.stdin:\n    print('echo ' + line.strip(), flush=True)\n"
    proc = procs.Supervised([sys.executable, "-c", echo], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, bufsize=1)
    for word in ("a", "b"):
        proc.stdin.write(word + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == f"echo {word}\n"
    proc.stdin.close()  # EOF reaches the command: the supervisor holds no copy of the pipe
    assert proc.stdout.read() == ""
    assert proc.wait(timeout=10) == 0


def test_stdout_ends_when_the_command_dies(marker):
    """The worker client reads EOF as "the engine is gone": the supervisor must not hold stdout open."""
    proc = procs.Supervised([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(300)"],
                            stdout=subprocess.PIPE, text=True, grace=30.0)
    command = int(proc.stdout.readline())
    os.kill(command, signal.SIGKILL)
    started = time.monotonic()
    assert proc.stdout.read() == ""
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("code", ["raise SystemExit(3)", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
def test_exit_status_is_the_commands(marker, code):
    expected = subprocess.run([sys.executable, "-c", code], check=False).returncode
    assert procs.Supervised([sys.executable, "-c", code]).wait(timeout=10) == expected


def test_a_missing_command_says_so(marker):
    out = procs.run(["/nonexistent/llama-server"], capture_output=True, text=True)
    assert out.returncode == 127
    assert "cannot start /nonexistent/llama-server" in out.stderr


def test_nothing_starts_when_quantkit_is_already_gone(marker, tmp_path):
    flag = tmp_path / "started"
    cmd = [sys.executable, "-I", "-S", str(procs.SUPERVISOR), "1", "1", "--", "touch", str(flag)]
    assert subprocess.run(cmd, check=False).returncode == 1  # PARENT_PID 1 is not our parent: as if quantkit had died
    assert not flag.exists()


def test_run_kills_the_tree_on_timeout(marker):
    with pytest.raises(subprocess.TimeoutExpired):
        procs.run([sys.executable, "-c", TREE], timeout=3, capture_output=True)
    assert _wait_gone(procs.marked_processes(marker), 5) == []


def test_run_logged_keeps_the_commands_output_code_and_peak_memory(marker, tmp_path):
    log = tmp_path / "step.log"
    grow = "import sys; block = bytearray(300 * 2**20); print('allocated', flush=True); sys.exit(0)"
    with track_peak_rss() as peak:
        run_logged([sys.executable, "-c", grow], log)
    assert "allocated" in log.read_text()
    assert peak["mib"] >= 300  # wait4 on the supervisor reports its reaped command's peak
    with pytest.raises(Exception, match="exit 4"):
        run_logged([sys.executable, "-c", "raise SystemExit(4)"], log)


def test_an_interrupted_step_stops_its_tree_while_quantkit_lives_on(marker, tmp_path):
    """Ctrl-C reaches quantkit only (engines run in sessions of their own): it must stop the tree itself."""
    log = tmp_path / "step.log"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from quantkit.envs.steps import run_logged
        try:
            run_logged([sys.executable, "-c", sys.argv[1]], Path({str(log)!r}))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            time.sleep(300)
    """)
    quantkit = subprocess.Popen([sys.executable, "-c", script, TREE], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        pids: list[int] = []
        while not pids and time.monotonic() < deadline:
            lines = [ln.split() for ln in log.read_text().splitlines()] if log.exists() else []
            pids = next((list(map(int, ln)) for ln in lines if len(ln) == 5 and all(x.isdigit() for x in ln)), [])
            time.sleep(0.05)
        assert pids and all(map(_alive, pids))
        quantkit.send_signal(signal.SIGINT)
        assert quantkit.stdout.readline() == "interrupted\n"
        assert _wait_gone(pids) == []
        assert procs.marked_processes(marker) == [quantkit.pid]
    finally:
        quantkit.kill()
        quantkit.wait()


SHARED_MEMORY = textwrap.dedent("""
    import signal, time
    from multiprocessing import shared_memory
    signal.signal(signal.SIGTERM, lambda *a: None)  # like vLLM while it starts: SIGTERM is not obeyed at once
    shm = shared_memory.SharedMemory(create=True, size=1 << 20)  # starts Python's resource tracker
    print(shm.name, flush=True)
    time.sleep(300)
""")


def test_shared_memory_is_unlinked_by_its_tracker_not_leaked(marker):
    """The resource tracker ignores SIGTERM so as to unlink what its dead users leave in /dev/shm:
    it must be allowed to outlive the rest of the tree, or the memory leaks until reboot."""
    quantkit = subprocess.Popen([sys.executable, "-c", QUANTKIT, SHARED_MEMORY], stdout=subprocess.PIPE, text=True)
    supervisor, name = quantkit.stdout.readline().split()
    segment = f"/dev/shm/{name.lstrip('/')}"
    assert os.path.exists(segment)
    tracker = [p for p in procs.marked_processes(marker) if "resource_tracker" in open(f"/proc/{p}/cmdline").read()]
    assert tracker
    os.kill(quantkit.pid, signal.SIGKILL)
    quantkit.wait()
    assert _wait_gone(procs.marked_processes(marker)) == []
    assert not os.path.exists(segment)
