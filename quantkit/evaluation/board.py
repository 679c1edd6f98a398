"""What every model of a compare is doing: its engine, the node its worker runs on, its current
group and its state. compare updates it from each model's thread; it renders as the live table
of a compare that measures several variants at once (a cluster executor), and tells each figure
which other models were being measured while it was (`measured_alongside` in its conditions)."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Entry:
    model: str
    engine: str = "?"
    node: str = "-"
    group: str = "-"
    state: str = "waiting"  # waiting | starting | measuring | done | failed


class Board:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def update(self, model: str, **fields: str) -> None:
        with self._lock:
            entry = self.entries.setdefault(model, Entry(model))
            for k, v in fields.items():
                setattr(entry, k, v)

    def busy_besides(self, model: str) -> list[str]:
        """The other models whose engines are starting or measuring now."""
        with self._lock:
            return sorted(e.model for e in self.entries.values()
                          if e.model != model and e.state in ("starting", "measuring"))

    def table(self, title: str = "compare"):
        from rich.table import Table

        t = Table(title=title)
        for column in ("model", "engine", "node", "group", "state"):
            t.add_column(column)
        style = {"done": "green", "failed": "red", "measuring": "bold", "starting": "yellow"}
        with self._lock:
            for e in self.entries.values():
                t.add_row(e.model, e.engine, e.node, e.group, f"[{style.get(e.state, 'dim')}]{e.state}[/]")
        return t
