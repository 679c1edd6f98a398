"""The leaderboard as text, for callers that want finished strings (tests, scripts, older code).

The judgements (ties, `†`, floors, flips, reasons) are made once in the typed report
(quantkit/results/report.py), and every format is a registered exporter
(quantkit/results/exporters/). These functions build the report from a store and render it with
the plain-text convention of exporters/text.py.
"""

from __future__ import annotations

from quantkit.results import exporters, report
from quantkit.results.exporters import text
from quantkit.results.report import COLUMNS, DETAIL_COLUMNS, FLOOR_COLUMN  # noqa: F401 (re-exported)
from quantkit.results.store import Figure, Store

footnoted = text.footnoted


def sections(store: Store) -> list[str]:
    """One table per reference model (a variant is compared with the model it was built from)."""
    return report.section_names(store.figures())


def _section(store: Store, section: str) -> report.Section:
    return report.section(store.figures(), section)


def table(store: Store, section: str = "reference", *, details: bool = False) -> tuple[list[str], list[list[str]]]:
    """The section's table; `details` adds every fidelity statistic (CSV/JSON)."""
    t = text.leaderboard_table(_section(store, section), details=details)
    return t.header(), text.rows(t)


def floors(store: Store, section: str = "reference") -> dict:
    """{"noise": the reference's noise-floor KLD figure, "engine": {engine: its baseline's KLD
    figure against the reference}} of one section (absent where not measured)."""
    fl = report.floors(store.figures(), section)
    return {"noise": fl.noise, "engine": fl.engine}


def overlapping_pairs(store: Store, section: str = "reference", metric: str = "kld_mean") -> list[tuple[str, str]]:
    return report.overlapping_pairs(store.figures(), section, metric)


def fidelity_details(store: Store, section: str = "reference") -> tuple[list[str], list[list[str]]]:
    t = report.fidelity_table(store.figures(), section)
    return t.header(), text.rows(t)


def notes(store: Store) -> list[str]:
    return report.notes(store.figures())


def probes(store: Store) -> dict[str, dict[str, str]]:
    return report.probes(store.figures())


def sweep_table(store: Store) -> tuple[list[str], list[list[str]]]:
    """Variants x temperatures: 'accuracy ± se / diversity' per cell."""
    t = report.sweep_table(store.figures())
    return t.header(), text.rows(t)


def full_table(store: Store) -> tuple[list[str], list[list[str]]]:
    return text.full_table(report.build(store))


def to_markdown(store: Store) -> str:
    return exporters.export(store, "md")


def to_csv(store: Store) -> str:
    return exporters.export(store, "csv")


def to_json(store: Store) -> str:
    return exporters.export(store, "json")


__all__ = ["COLUMNS", "DETAIL_COLUMNS", "FLOOR_COLUMN", "Figure", "Store", "footnoted", "sections", "table", "floors",
           "overlapping_pairs", "fidelity_details", "notes", "probes", "sweep_table", "full_table", "to_markdown",
           "to_csv", "to_json"]
