"""The JSON-lines protocol between the core and an engine worker process (stdlib only).

Hand-written because the protocol is three lines of JSON handling and must import nothing that
an engine environment lacks. One request per line on the worker's stdin:
    {"id": 1, "op": "generate", "args": {...}}
one answer per line on a private copy of the original stdout:
    {"id": 1, "ok": true, "result": {...}}   or   {"id": 1, "ok": false, "error": "..."}
The worker points fd 1 at stderr before loading any engine, so library prints cannot corrupt the
protocol stream; stderr goes to the worker's log file.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

Handler = Callable[..., Any]


def claim_stdout():
    """Keep a private copy of stdout for answers and point fd 1 at stderr.

    Call first thing in a worker, before importing an engine: engines print to stdout.
    """
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def serve(handlers: dict[str, Handler], out) -> None:
    """Answer requests (on `out`, from `claim_stdout`) until stdin closes or `shutdown` arrives."""
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "shutdown":
                out.write(json.dumps({"id": req.get("id"), "ok": True, "result": None}) + "\n")
                break
            if op not in handlers:
                raise ValueError(f"unknown op {op!r}; known: {sorted(handlers)}")
            result = handlers[op](**req.get("args", {}))
            out.write(json.dumps({"id": req.get("id"), "ok": True, "result": result}) + "\n")
        except Exception as e:  # report every failure to the core, keep serving
            traceback.print_exc()
            out.write(json.dumps({"id": req.get("id"), "ok": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
    out.flush()
