"""Wall time of each stage a user waits through: engine starts, measurement groups, builds.

`StageClock` times `with clock.stage("start", model=..., engine=..., what="worker"):` blocks,
keeps one row per stage, prints nothing itself, and renders the rows as a table (the compare
summary and `make demo`'s closing table) or as plain dicts to store with the run. A stage that
raises is kept, marked failed, with its time: a slow failure is still time a user waited.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageClock:
    rows: list[dict[str, Any]] = field(default_factory=list)
    clock: Any = time.perf_counter

    @contextlib.contextmanager
    def stage(self, stage: str, **labels: Any) -> Iterator[dict[str, Any]]:
        """Time the block; the yielded row can take extra fields (e.g. the engine's own load_seconds)."""
        row: dict[str, Any] = {"stage": stage, **labels, "status": "ok"}
        t0 = self.clock()
        try:
            yield row
        except BaseException:
            row["status"] = "failed"
            raise
        finally:
            row["seconds"] = self.clock() - t0
            self.rows.append(row)

    def total(self, **match: Any) -> float:
        """Seconds of the rows whose labels match, e.g. total(stage="start") or total(model="reference")."""
        return sum(r["seconds"] for r in self.rows if all(r.get(k) == v for k, v in match.items()))

    def table(self, title: str = "stage times"):
        """A rich Table: one row per stage, in order, then the total."""
        from rich.table import Table

        keys = [k for k in dict.fromkeys(k for r in self.rows for k in r) if k not in ("seconds", "status")]
        t = Table(title=title)
        for k in keys:
            t.add_column(k)
        t.add_column("seconds", justify="right")
        for r in self.rows:
            cells = [str(r.get(k, "")) for k in keys]
            secs = f"{r['seconds']:.1f}" + (" (failed)" if r["status"] != "ok" else "")
            t.add_row(*cells, secs)
        t.add_row(*(["total"] + [""] * (len(keys) - 1)), f"{sum(r['seconds'] for r in self.rows):.1f}")
        return t
