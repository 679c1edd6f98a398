"""Leaderboard exporters, registered by format name.

An exporter renders the typed report (quantkit/results/report.py) and never reads the store. It
is a class (or an instance) with `name`, `suffix` (the usual file suffix), `description` and
`render(report) -> str`. Registration is lazy, as in lm-evaluation-harness's
`lm_eval/api/registry.py`: a `"module:attr"` string is imported on first use, so listing the
formats imports no exporter. Adding an exporter is one file here plus one line in `BUILTIN`;
code outside quantkit (tests, plugins) calls `register()`, and installed packages may declare an
entry point in the `quantkit.exporters` group. The mechanics are quantkit.registry's; an unknown or
unloadable format is a KeyError, a name taken by another exporter a ValueError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from quantkit.registry import Registry, folded

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


def _exporter(name: str, target: Any) -> Exporter:
    """An exporter class made into its instance (without arguments); an instance as it is."""
    return target() if isinstance(target, type) else target


_exporters: Registry[Exporter] = Registry("format", BUILTIN, make=_exporter, entry_point_group=ENTRY_POINT_GROUP,
                                          error=folded(KeyError), duplicate_error=folded(ValueError))


def register(name: str, target: Target, *, replace: bool = False) -> None:
    """Register an exporter under a format name: a `"module:attr"` string (imported on first use),
    an exporter class (instantiated without arguments on first use) or an exporter instance."""
    _exporters.register(name, target, replace=replace)


def unregister(name: str) -> None:
    _exporters.unregister(name)


def names() -> list[str]:
    """The registered format names, built-in ones first (the others sorted)."""
    listed = _exporters.names()
    return [n for n in listed if n in BUILTIN] + sorted(n for n in listed if n not in BUILTIN)


def get(name: str) -> Exporter:
    """The exporter of a format; KeyError (naming the formats) for an unknown one."""
    return _exporters.get(name)


def export(source: Store | Report, name: str) -> str:
    """Render a store (its report built here) or an already built report in one format."""
    from quantkit.results.report import Report, build

    return get(name).render(source if isinstance(source, Report) else build(source))
