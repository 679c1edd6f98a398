"""Cells as plain text, the convention of the markdown, CSV and JSON leaderboards:
`≈ 0.450 ± 0.050 −8/+3 p=0.23`, `0.0104 ± 0.0003 ≤E`, `121.0 ± 3.0 †`, `n/a (why)`.

`≈`: within noise of the reference; `†`: measured under other conditions than the reference's;
`≤E` / `≤N`: a KLD the engine or noise floor alone could produce; `−a/+b p=`: accuracy flips.
"""

from __future__ import annotations

from quantkit.results.report import Cell, Report, Section, Table
from quantkit.results.store import Figure

NOT_MEASURED = "n/a (not measured)"


def short(reason: str, limit: int = 240) -> str:
    text = " ".join(reason.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(c: Cell) -> str:
    s = c.fmt.format(c.value)
    if c.show_uncertainty and c.uncertainty is not None:
        s += " ± " + c.fmt.format(c.uncertainty)
    return s


def marks(c: Cell) -> str:
    """What follows the number: `†`, the floor marks and the flips."""
    s = "" if c.comparable else " †"
    if c.floors:
        s += " " + " ".join(c.floors)
    if c.flips is not None:
        s += f" −{c.flips.lost:.0f}/+{c.flips.gained:.0f} p={c.flips.p:.2g}"
    return s


def text(c: Cell) -> str:
    if c.label is not None:
        return c.label
    if c.parts:
        return " / ".join(text(p) for p in c.parts)
    n = f" (n={c.n})" if c.show_n else ""
    if c.value is None:
        return f"n/a ({short(c.reason or 'not measured')})" + n
    tie = "≈ " if c.tie and c.comparable else ""
    failed = " (failed)" if c.failed else ""  # a value measured by a step that then failed
    return tie + number(c) + marks(c) + failed + n


def rows(table: Table) -> list[list[str]]:
    return [[text(c) for c in r.cells] for r in table.rows]


def footnoted_cells(table: Table, inline: int = 24) -> tuple[list[list[str]], list[str]]:
    """The table as text, where a missing cell's reason longer than `inline` becomes `n/a [k]`, with
    the reason once under the table."""
    numbers: dict[str, int] = {}
    out = []
    for row in table.rows:
        cells = []
        for c in row.cells:
            reason = short(c.reason or "not measured") if c.missing and not c.show_n else ""
            cells.append(f"n/a [{numbers.setdefault(reason, len(numbers) + 1)}]" if len(reason) > inline else text(c))
        out.append(cells)
    return out, [f"[{k}] {reason}" for reason, k in numbers.items()]


def footnoted(rows: list[list[str]], inline: int = 24) -> tuple[list[list[str]], list[str]]:
    """Long reasons in `n/a (...)` text cells become `n/a [k]` with the reason once, under the table
    (footnoted_cells does it on the typed cells)."""
    numbers: dict[str, int] = {}
    out = []
    for row in rows:
        cells = []
        for cell in row:
            reason = cell[len("n/a ("):-1] if cell.startswith("n/a (") and cell.endswith(")") else None
            if reason is not None and len(reason) > inline:
                cell = f"n/a [{numbers.setdefault(reason, len(numbers) + 1)}]"
            cells.append(cell)
        out.append(cells)
    return out, [f"[{k}] {reason}" for reason, k in numbers.items()]


def leaderboard_table(section: Section, *, details: bool = False) -> Table:
    """The section's table; `details` keeps every fidelity statistic (CSV/JSON)."""
    return section.table if details else section.table.select(lambda c: not c.detail)


def full_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Every section's rows in one table, with the reference each row is compared with as the last
    column (the task columns are the union over sections)."""
    parts = [(s.reference, s.table.header(), rows(s.table)) for s in report.sections]
    header = list(dict.fromkeys(h for _, hs, _ in parts for h in hs)) + ["compared with"]
    out = [[dict(zip(hs, r)).get(h, NOT_MEASURED) for h in header[:-1]] + [name] for name, hs, rs in parts for r in rs]
    return header, out


def fmt_floor(f: Figure) -> str:
    return f"{f.value:.3g}" + (f" ± {f.uncertainty:.2g}" if f.uncertainty is not None else "")


def fidelity_lines(section: Section) -> list[str]:
    """The section's floors and the variants its KLD cannot order, as sentences."""
    fl = section.floors
    lines = []
    parts = [f"noise floor {fmt_floor(fl.noise)} (the reference re-scored one window per call)"] if fl.noise else []
    parts += [f"engine floor of {engine} {fmt_floor(f)} ({f.variant} against the reference)"
              for engine, f in sorted(fl.engine.items())]
    if parts:
        lines.append("KLD floors: " + "; ".join(parts) + ". `≤E` / `≤N`: a KLD within 1.96 combined standard "
                     "errors of (or below) that floor.")
    if section.overlapping:
        lines.append("KLD mean 95% intervals overlap (not ordered by this data): "
                     + "; ".join(f"{a} ~ {b}" for a, b in section.overlapping) + ".")
    return lines
