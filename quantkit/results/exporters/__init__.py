"""Leaderboard exporters, registered by format name.

An exporter renders the typed report (quantkit/results/report.py) and never reads the store. It
is a class (or an instance) with `name`, `suffix` (the usual file suffix), `description` and
`render(report) -> str`. Registration is lazy, as in lm-evaluation-harness's
`lm_eval/api/registry.py`: a `"module:attr"` string is imported on first use, so listing the
formats imports no exporter. Adding an exporter is one file here plus one line in `BUILTIN`;
code outside quantkit (tests, plugins) calls `register()`, and installed packages may declare an
entry point in the `quantkit.exporters` group.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from quantkit.results.report import Report
    from quantkit.results.store import Store

BUILTIN: dict[str, str] = {
    "md": "quantkit.results.exporters.markdown:MarkdownExporter",
    "csv": "quantkit.results.exporters.csv:CsvExporter",
    "json": "quantkit.results.exporters.json:JsonExporter",
    "html": "quantkit.results.exporters.html:HtmlExporter",
}
ENTRY_POINT_GROUP = "quantkit.exporters"


class Exporter(Protocol):
    name: str
    suffix: str
    description: str

    def render(self, report: Report) -> str: ...


Target = str | type | Exporter
_registry: dict[str, Target] = dict(BUILTIN)
_loaded: dict[str, Exporter] = {}
_entry_points_read = False


def register(name: str, target: Target, *, replace: bool = False) -> None:
    """Register an exporter under a format name: a `"module:attr"` string (imported on first use),
    an exporter class (instantiated without arguments on first use) or an exporter instance."""
    if name in _registry and not replace and _registry[name] != target:
        raise ValueError(f"exporter {name!r} is already registered ({_registry[name]!r})")
    _registry[name] = target
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    _registry.pop(name, None)
    _loaded.pop(name, None)


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        _registry.setdefault(ep.name, ep.value)


def names() -> list[str]:
    """The registered format names, built-in ones first."""
    _read_entry_points()
    return list(BUILTIN) + sorted(n for n in _registry if n not in BUILTIN)


def get(name: str) -> Exporter:
    """The exporter of a format; KeyError (naming the formats) for an unknown one."""
    _read_entry_points()
    if name in _loaded:
        return _loaded[name]
    if name not in _registry:
        raise KeyError(f"unknown format {name!r}; choose one of: {', '.join(names())}")
    target = _registry[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    exporter = target() if isinstance(target, type) else target
    _loaded[name] = exporter
    return exporter


def export(source: Store | Report, name: str) -> str:
    """Render a store (its report built here) or an already built report in one format."""
    from quantkit.results.report import Report, build

    return get(name).render(source if isinstance(source, Report) else build(source))
