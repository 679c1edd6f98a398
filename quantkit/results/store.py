"""Results as records: one SQLite row per measured figure (or per failure, with its reason).

Everything downstream (leaderboard, plots, resume) reads these rows and nothing else. A row is
committed as soon as it is measured, so a compare that dies loses nothing already measured.
`key` identifies the measurement's conditions; re-running skips keys already present.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit import paths

SCHEMA = """
CREATE TABLE IF NOT EXISTS figures (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,            -- hash of (variant, engine, settings, group, conditions)
    variant TEXT NOT NULL,
    engine TEXT NOT NULL,
    grp TEXT NOT NULL,            -- measurement group: fidelity, task:arc_easy, speed:offline, ...
    metric TEXT NOT NULL,
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


def measurement_key(variant: str, engine: str, settings: dict, group: str, conditions: dict, fingerprint: dict) -> str:
    blob = json.dumps([variant, engine, settings, group, conditions, fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class Store:
    def __init__(self, path: Path | None = None):
        self.path = Path(path or paths.results_db())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.executescript(SCHEMA)

    def done(self, key: str) -> bool:
        """Was this measurement completed (successfully) before?"""
        row = self.db.execute("SELECT 1 FROM figures WHERE key=? AND status='ok' LIMIT 1", (key,)).fetchone()
        return row is not None

    def put(self, key: str, figures: list[Figure]) -> None:
        """Write a measurement's figures atomically (replacing an earlier failure of the same key)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.db:
            self.db.execute("DELETE FROM figures WHERE key=?", (key,))
            for f in figures:
                self.db.execute(
                    "INSERT INTO figures (key, variant, engine, grp, metric, value, uncertainty, n, unit, text, status,"
                    " reason, settings, conditions, fingerprint, measured_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (key, f.variant, f.engine, f.group, f.metric, f.value, f.uncertainty, f.n, f.unit, f.text,
                     f.status, f.reason, json.dumps(f.settings, sort_keys=True, default=str),
                     json.dumps(f.conditions, sort_keys=True, default=str),
                     json.dumps(f.fingerprint, sort_keys=True, default=str), f.measured_at or now))

    _COLUMNS = ("variant, engine, grp, metric, value, uncertainty, n, unit, text, status, reason, settings,"
                " conditions, fingerprint, measured_at, id, key")

    @staticmethod
    def _figure(r: tuple) -> Figure:
        return Figure(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], json.loads(r[11]),
                      json.loads(r[12]), json.loads(r[13]), r[14], r[16])

    def get(self, key: str) -> list[Figure]:
        """The figures stored under one measurement key (empty if none)."""
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM figures WHERE key=? ORDER BY id", (key,)).fetchall()
        return [self._figure(r) for r in rows]

    def figures(self, *, latest: bool = True) -> list[Figure]:
        """All figures; with `latest`, only those of the newest measurement (key) per (variant, engine,
        group): a re-measurement under other conditions, or a newer failure, replaces the whole group
        rather than mixing with it."""
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM figures ORDER BY id").fetchall()
        newest: dict[tuple, str] = {}
        for r in rows:
            newest[(r[0], r[1], r[2])] = r[16]
        return [self._figure(r) for r in rows if not latest or newest[(r[0], r[1], r[2])] == r[16]]

    def close(self) -> None:
        self.db.close()


def as_dict(f: Figure) -> dict:
    return asdict(f)
