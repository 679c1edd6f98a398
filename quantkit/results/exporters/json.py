"""The JSON leaderboard: the CSV's table, fidelity in detail with floors and overlapping pairs per
section, probes, the sweep, the conditions and every stored figure."""

from __future__ import annotations

import json

from quantkit.results.exporters.text import full_table, rows
from quantkit.results.report import Report, Section
from quantkit.results.store import as_dict


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
        header, table = full_table(report)
        return json.dumps({"table": {"header": header, "rows": table}, "probes": report.probes, "notes": report.notes,
                           "fidelity": {s.reference: _fidelity(s) for s in report.sections},
                           "sweep": {"header": report.sweep.header(), "rows": rows(report.sweep)},
                           "figures": [as_dict(f) for f in report.figures]}, indent=2, default=str)
