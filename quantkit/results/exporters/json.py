"""The JSON leaderboard: the CSV's table, fidelity in detail with floors and overlapping pairs per
section, probes, the sweep, the conditions and every stored figure; and under `sections` the
typed report's cells (value, uncertainty, n, unit, tie, comparability, floor marks, flips,
reason), for programs that should not parse `≈ 0.450 ± 0.050 †`."""

from __future__ import annotations

import json

from quantkit.results.exporters.text import full_table, rows, text
from quantkit.results.report import Cell, Report, Section, Table
from quantkit.results.store import as_dict


def cell(c: Cell) -> dict:
    """A cell as data; `figure` names the stored figure it shows (measurement key and metric)."""
    out: dict = {"text": text(c), "value": c.value, "uncertainty": c.uncertainty, "n": c.n, "unit": c.unit,
           "label": c.label, "tie": c.tie, "comparable": c.comparable, "floors": list(c.floors),
           "flips": None if c.flips is None else {"lost": c.flips.lost, "gained": c.flips.gained, "p": c.flips.p},
           "reason": c.reason, "failed": c.failed,
           "figure": None if c.figure is None else {"key": c.figure.key, "group": c.figure.group,
                                                    "metric": c.figure.metric, "params": c.figure.params}}
    if c.parts:
        out["parts"] = [cell(p) for p in c.parts]
    return out


def typed_table(t: Table) -> dict:
    return {"columns": [{"title": c.title, "group": c.group or None, "metric": c.metric or None,
                         "params": dict(c.params), "higher_is_better": c.higher_is_better, "detail": c.detail} for c in t.columns],
            "rows": [{"variant": r.variant, "engine": r.engine, "reference": r.reference,
                      "cells": [cell(c) for c in r.cells]} for r in t.rows]}


def _fidelity(section: Section) -> dict:
    fl = section.floors
    floors: dict = {}
    if fl.noise is not None:
        floors["noise"] = as_dict(fl.noise)
    if fl.engine:
        floors["engine"] = {e: as_dict(f) for e, f in fl.engine.items()}
    return {"header": section.fidelity.header(), "rows": rows(section.fidelity),
            "overlapping_kld_pairs": section.overlapping, "floors": floors}


class JsonExporter:
    name = "json"
    suffix = ".json"
    description = "JSON: the CSV's table, fidelity details, probes, sweep, notes and every figure"

    def render(self, report: Report) -> str:
        header, body = full_table(report)
        return json.dumps({"table": {"header": header, "rows": body}, "probes": report.probes, "notes": report.notes,
                           "fidelity": {s.reference: _fidelity(s) for s in report.sections},
                           "sweep": {"header": report.sweep.header(), "rows": rows(report.sweep)},
                           "scaling": {"header": report.scaling.header(), "rows": rows(report.scaling)},
                           "figures": [as_dict(f) for f in report.figures],
                           "sections": [{"reference": s.reference, "table": typed_table(s.table)} for s in report.sections]},
                          indent=2, default=str)
