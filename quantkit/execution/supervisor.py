"""Supervisor of one engine command: the command's whole process tree dies with quantkit.

    python -I -S supervisor.py PARENT_PID GRACE -- command args...

quantkit starts every engine process (workers, servers, build steps) through this program, which
is stdlib-only and imports nothing from quantkit, so any Python 3.9+ runs it. It

- starts the command in a new process group, on the supervisor's own stdin, stdout and stderr:
  the worker protocol's pipes go straight to the engine, never through the supervisor, which
  then drops its copies of stdin and stdout so that EOF on them still means "the engine is gone";
- is a child subreaper (Linux PR_SET_CHILD_SUBREAPER): a descendant that leaves the group or the
  session (setsid, double fork) and loses its parent re-parents to the supervisor instead of to
  init, so the whole tree stays findable as the supervisor's descendants;
- watches its parent (quantkit): when the parent dies, even by SIGKILL, which no handler sees,
  it stops the whole tree: SIGTERM, then SIGKILL after GRACE seconds;
- forwards SIGINT, SIGTERM and SIGHUP to the command's process group (graceful stops), and takes
  SIGUSR1 as "kill the whole tree now" (SIGKILL itself cannot be caught to be forwarded);
- when the command itself exits, stops what is left of its tree the same way, then exits as the
  command did (same exit code, or the same fatal signal), so callers see the command's status.

Why: PR_SET_PDEATHSIG reaches only a direct child. A killed `quantkit compare` took vLLM's
api_server with it but left its EngineCore and Worker running under init. Hand-written because
the init-style supervisors (tini, dumb-init) forward signals and reap zombies but leave live
descendants running when their child exits, and none watches its own parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KILL_NOW = signal.SIGUSR1
POLL_S = 0.25  # how often the parent is checked; a dead parent is noticed within this
CLEANUP_S = 2.0  # how long SIGTERM-deaf cleanup helpers may outlive the rest of the tree (see teardown)
KILL_WAIT_S = 30.0  # how long SIGKILLed processes may take to disappear (D state) before we give up


def _prctl(option: int, arg: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _child_setup() -> None:
    """In the command, before exec: its own process group; killed if the supervisor is killed."""
    os.setpgid(0, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def descendants(root: int, zombies: bool = False) -> list[int]:
    """Every process below `root`, from /proc (parents are read from /proc/PID/stat); zombies only
    when asked (a zombie is dead, but its threads may still be exiting until it can be reaped)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # the command name may hold spaces and parens
        if fields and (zombies or fields[0] != b"Z"):
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            out.append(pid)
            todo.append(pid)
    return out


def _ignores_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


class Supervisor:
    def __init__(self, parent: int, grace: float, cmd: list[str]):
        self.parent, self.grace, self.cmd = parent, grace, cmd
        self.leader: subprocess.Popen | None = None
        self.status: int | None = None  # the leader's wait status, once it has exited

    def reap(self) -> None:
        """Collect every exited child (orphans re-parented to us included); note the leader's status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.leader is not None and pid == self.leader.pid:
                self.status = status
                self.leader.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again

    def signal_tree(self, sig: int) -> int:
        """Send `sig` to the leader's group and to every descendant outside it; how many were signalled."""
        me, group = os.getpid(), self.leader.pid if self.leader else None
        outside = []
        for pid in descendants(me):
            try:
                if os.getpgid(pid) != group:
                    outside.append(pid)
            except ProcessLookupError:
                pass
        n = 0
        if group is not None:
            try:
                os.killpg(group, sig)
                n += 1
            except (ProcessLookupError, PermissionError):
                pass
        for pid in outside:
            try:
                os.kill(pid, sig)
                n += 1
            except (ProcessLookupError, PermissionError):
                pass
        return n

    def wait_gone(self, timeout: float, pids: list[int] | None = None) -> bool:
        """Reap for up to `timeout` s until no live descendant (or none of `pids`) is left."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            live = descendants(os.getpid())
            if not (live if pids is None else set(live) & set(pids)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def teardown(self, grace: float) -> None:
        """Stop the whole tree: SIGTERM, up to `grace` s for it to exit, then SIGKILL until none is left.

        Processes that ignore SIGTERM are SIGKILLed last, up to CLEANUP_S after the others: Python's
        multiprocessing resource_tracker (vLLM starts one) ignores SIGTERM so as to outlive its users
        and unlink the shared memory (/dev/shm) and semaphores they leave; killed with them, it would
        leak that memory until reboot."""
        me = os.getpid()
        if grace > 0 and self.signal_tree(signal.SIGTERM):
            self.wait_gone(grace)
        live = descendants(me)
        first = [p for p in live if not _ignores_sigterm(p)]
        if first and len(first) < len(live):
            for pid in first:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self.wait_gone(CLEANUP_S, [p for p in live if p not in first])
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline:  # bounded: a process we may not signal must not hang us
            self.reap()
            if not descendants(me, zombies=True):  # reaped: every thread of the tree has exited
                break
            if descendants(me):
                self.signal_tree(signal.SIGKILL)
            time.sleep(0.02)
        self.reap()

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent

    def run(self) -> int:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)  # each caught signal's number arrives on wake_r
        for sig in (*FORWARDED, KILL_NOW, signal.SIGCHLD):
            signal.signal(sig, lambda signum, frame: None)
        if not self.parent_alive():
            return 1  # quantkit died before we could start: start nothing
        try:
            # inherits fds 0, 1, 2; preexec_fn is safe here: the supervisor has one thread
            self.leader = subprocess.Popen(self.cmd, preexec_fn=_child_setup)  # noqa: PLW1509
        except OSError as e:
            print(f"quantkit supervisor: cannot start {self.cmd[0]}: {e}", file=sys.stderr, flush=True)
            return 127
        devnull = os.open(os.devnull, os.O_RDWR)  # let go of the data path: only the command holds it
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        while True:
            try:
                ready, _, _ = select.select([wake_r], [], [], POLL_S)
                signals = os.read(wake_r, 512) if ready else b""
            except InterruptedError:
                signals = b""
            for signum in signals:
                sig = signal.Signals(signum)
                if sig in FORWARDED and self.status is None:
                    try:
                        os.killpg(self.leader.pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
                elif sig == KILL_NOW:
                    self.teardown(0)
            self.reap()
            if not self.parent_alive():
                self.teardown(self.grace)
                return 1
            if self.status is not None:
                self.teardown(self.grace)
                return self.exit_as_leader()

    def exit_as_leader(self) -> int:
        status = self.status or 0
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            signal.set_wakeup_fd(-1)
            if sig != signal.SIGKILL:  # SIGKILL's action is fixed (and fatal)
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return 128 + sig  # only reached for a signal whose default action is not to terminate
        return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: supervisor.py PARENT_PID GRACE -- command args...", file=sys.stderr)
        return 2
    return Supervisor(int(argv[1]), float(argv[2]), argv[4:]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
