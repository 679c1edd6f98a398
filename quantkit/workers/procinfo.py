"""Process facts read from /proc (stdlib only: used inside engine environments)."""

from __future__ import annotations


def peak_rss(pid: int) -> int:
    """VmHWM, the process's peak resident set in bytes (Linux); 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
