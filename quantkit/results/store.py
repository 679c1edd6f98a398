"""Results as records: one SQLite row per measured figure (or per failure, with its reason).

Everything downstream (leaderboard, plots, resume) reads these rows and nothing else. A row is
committed as soon as it is measured, so a compare that dies loses nothing already measured.
`key` identifies the measurement's conditions; re-running skips keys already present.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantkit import paths

SCHEMA = """
CREATE TABLE IF NOT EXISTS figures (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,            -- hash of (variant, engine, settings, group, conditions)
    variant TEXT NOT NULL,
    engine TEXT NOT NULL,
    grp TEXT NOT NULL,            -- measurement group: fidelity, tasks, serving, ...
    metric TEXT NOT NULL,         -- what was measured: kld_mean, acc, ttft_median_ms, ...
    params TEXT NOT NULL DEFAULT '{}',  -- the metric's parameters (JSON): {"concurrency": 4}, {"task": "arc_easy"}
    value REAL,
    uncertainty REAL,             -- standard error, or spread for speed figures (see conditions)
    n INTEGER,                    -- sample size
    unit TEXT,
    text TEXT,                    -- for generations (probes)
    status TEXT NOT NULL,         -- ok | failed
    reason TEXT,
    settings TEXT NOT NULL,       -- engine settings (JSON)
    conditions TEXT NOT NULL,     -- data, sampling, seeds, repeats ... (JSON)
    fingerprint TEXT NOT NULL,    -- hardware + versions (JSON)
    measured_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS figures_key ON figures(key);
"""


@dataclass
class Figure:
    variant: str
    engine: str
    group: str
    metric: str
    value: float | None = None
    uncertainty: float | None = None
    n: int | None = None
    unit: str | None = None
    text: str | None = None
    status: str = "ok"
    reason: str | None = None
    settings: dict = field(default_factory=dict)
    conditions: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)
    measured_at: str = ""
    key: str = ""  # the measurement it belongs to (set when read from the store)
    # the metric's parameters, never folded into its name: {"concurrency": 4}, {"temperature": 0.6},
    # {"task": "arc_easy"}, {"top1_p_lo": 0.8, "top1_p_hi": 0.95}, {"probe": "capital"}
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def quantity(self) -> Quantity:
        """What this figure measures, as the report looks it up: (group, metric, params)."""
        return Quantity(self.group, self.metric, params_key(self.params))


ParamsKey = tuple[tuple[str, Any], ...]


def params_key(params: dict[str, Any]) -> ParamsKey:
    """Parameters as a hashable, order-free key."""
    return tuple(sorted(params.items()))


@dataclass(frozen=True)
class Quantity:
    """A measured quantity independent of the model: its group, metric and parameters."""
    group: str
    metric: str
    params: ParamsKey = ()

    def __str__(self) -> str:
        return self.metric + (f"[{', '.join(f'{k}={v}' for k, v in self.params)}]" if self.params else "")


# Before the params column, parameters travelled in names; stores written then are read through this.
_LEGACY_SUFFIXES = ((re.compile(r"^(?P<m>.+)@conf=(?P<lo>[-\d.e]+)-(?P<hi>[-\d.e]+)$"), ("top1_p_lo", "top1_p_hi")),
                    (re.compile(r"^(?P<m>.+)@T=(?P<t>[-\d.e]+)$"), ("temperature",)),
                    (re.compile(r"^(?P<m>.+)@(?P<c>\d+)$"), ("concurrency",)))


def legacy_params(group: str, metric: str) -> tuple[str, str, dict[str, Any]]:
    """(group, metric, params) of a figure named the old way: `ttft_median_ms@4`, `accuracy@T=0.6`,
    `kld_mean@conf=0.8-0.95`, group `task:arc_easy`, metric `probe:capital`."""
    params: dict[str, Any] = {}
    if group.startswith("task:"):
        group, params["task"] = "tasks", group.removeprefix("task:")
    if group == "probes" and metric.startswith("probe:"):
        metric, params["probe"] = "answer", metric.removeprefix("probe:")
    for pattern, names in _LEGACY_SUFFIXES:
        m = pattern.match(metric)
        if m:
            metric = m.group("m")
            values = [float(v) if "." in v or "e" in v else int(v) for v in m.groups()[1:]]
            params.update(zip(names, values))
            break
    return group, metric, params


def measurement_key(variant: str, engine: str, settings: dict, group: str, conditions: dict, fingerprint: dict) -> str:
    blob = json.dumps([variant, engine, settings, group, conditions, fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class Store:
    """The SQLite store. One connection, shared by compare's threads (variants measured at once on
    a cluster) under a lock: each `put` is one transaction, so a reader never sees half a group."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or paths.results_db())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.lock = threading.RLock()
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Give a store written before the params column its parameters (read out of the old names)."""
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(figures)")}
        if "params" in columns:
            return
        with self.db:
            self.db.execute("ALTER TABLE figures ADD COLUMN params TEXT NOT NULL DEFAULT '{}'")
            for row_id, grp, metric in self.db.execute("SELECT id, grp, metric FROM figures").fetchall():
                new_grp, new_metric, params = legacy_params(grp, metric)
                if params:
                    self.db.execute("UPDATE figures SET grp=?, metric=?, params=? WHERE id=?",
                                    (new_grp, new_metric, json.dumps(params, sort_keys=True), row_id))

    def done(self, key: str) -> bool:
        """Was this measurement completed (successfully) before?"""
        with self.lock:
            row = self.db.execute("SELECT 1 FROM figures WHERE key=? AND status='ok' LIMIT 1", (key,)).fetchone()
        return row is not None

    def put(self, key: str, figures: list[Figure]) -> None:
        """Write a measurement's figures atomically (replacing an earlier failure of the same key)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.lock, self.db:
            self.db.execute("DELETE FROM figures WHERE key=?", (key,))
            for f in figures:
                self.db.execute(
                    "INSERT INTO figures (key, variant, engine, grp, metric, params, value, uncertainty, n, unit, text,"
                    " status, reason, settings, conditions, fingerprint, measured_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (key, f.variant, f.engine, f.group, f.metric, json.dumps(f.params, sort_keys=True), f.value, f.uncertainty, f.n, f.unit, f.text,
                     f.status, f.reason, json.dumps(f.settings, sort_keys=True, default=str),
                     json.dumps(f.conditions, sort_keys=True, default=str),
                     json.dumps(f.fingerprint, sort_keys=True, default=str), f.measured_at or now))

    _COLUMNS = ("variant, engine, grp, metric, value, uncertainty, n, unit, text, status, reason, settings,"
                " conditions, fingerprint, measured_at, id, key, params")

    @staticmethod
    def _figure(r: tuple) -> Figure:
        return Figure(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], json.loads(r[11]),
                      json.loads(r[12]), json.loads(r[13]), r[14], r[16], json.loads(r[17]))

    def get(self, key: str) -> list[Figure]:
        """The figures stored under one measurement key (empty if none)."""
        with self.lock:
            rows = self.db.execute(f"SELECT {self._COLUMNS} FROM figures WHERE key=? ORDER BY id", (key,)).fetchall()
        return [self._figure(r) for r in rows]

    def figures(self, *, latest: bool = True) -> list[Figure]:
        """All figures; with `latest`, only those of the newest measurement (key) per (variant, engine,
        group): a re-measurement under other conditions, or a newer failure, replaces the whole group
        rather than mixing with it."""
        with self.lock:
            rows = self.db.execute(f"SELECT {self._COLUMNS} FROM figures ORDER BY id").fetchall()
        newest: dict[tuple, str] = {}
        for r in rows:
            newest[(r[0], r[1], r[2])] = r[16]
        return [self._figure(r) for r in rows if not latest or newest[(r[0], r[1], r[2])] == r[16]]

    def close(self) -> None:
        self.db.close()


def as_dict(f: Figure) -> dict:
    return asdict(f)
