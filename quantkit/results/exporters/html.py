"""The HTML leaderboard: one self-contained file (inline CSS, script and SVG plots; it loads
nothing over the network), to open in a browser or attach to a report.

- every table sorts by a click on its header (numbers by value, missing cells last, the
  reference row stays on top);
- ties (`≈`), figures measured under other conditions (`†`), KLDs within a floor (`≤E`/`≤N`),
  failures and cells never measured are styled by CSS class (`tie`, `incomparable`, `floor`,
  `failed`, `missing`), with the mark kept in the text as well;
- the plots are inline SVG whose points show the variant and its headline figures on hover
  (the SVG `<title>`: the browser's own tooltip);
- a figure's conditions, settings, n and fingerprint are in its cell's tooltip, and in full in
  a side panel on click; the fingerprints are listed once, at the end.

The script is hand-written (about 60 lines, no library): a table sort and a panel are all the page
needs, and a file that must open offline, years later, cannot fetch a framework.
"""

from __future__ import annotations

import json
from html import escape

from quantkit.results.exporters.text import (
    fidelity_lines,
    leaderboard_table,
    number,
    short,
)
from quantkit.results.exporters.text import text as cell_text
from quantkit.results.report import (
    FLOOR_COLUMN,
    Cell,
    Column,
    Report,
    Table,
    references_first,
)
from quantkit.results.store import Figure

INLINE_REASON = 24  # longer reasons become numbered notes under the table, as in the markdown

CSS = """
:root { --tie: #e3f4e1; --incomparable: #fff4d6; --failed: #fde2e1; --floor: #2a6fdb; --muted: #777; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; } h3 { font-size: 1.05rem; }
.legend span { display: inline-block; padding: 0 .4em; margin-right: .6em; border-radius: 3px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8d8d8; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f5; position: sticky; top: 0; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " ▲"; } th[aria-sort="descending"]::after { content: " ▼"; }
td.label, th.label { text-align: left; }
tr.reference td { font-weight: 600; background: #f7f9ff; }
td.tie { background: var(--tie); }
td.incomparable { background: var(--incomparable); font-style: italic; }
td.floor .mark-floor { color: var(--floor); font-weight: 600; }
td.failed { background: var(--failed); color: #8a1f11; }
td.missing { color: var(--muted); }
td.fig { cursor: help; }
td.selected { outline: 2px solid var(--floor); }
.flips { color: #555; font-size: .9em; }
.notes li, .reasons li { margin: .2em 0; }
figure.plot { display: inline-block; margin: 0 1rem 1rem 0; vertical-align: top; }
figure.plot svg { width: min(100%, 34rem); height: auto; }
.qk-point:hover { opacity: .6; }
#inspect { position: fixed; right: 1rem; bottom: 1rem; width: min(34rem, 90vw); max-height: 60vh; overflow: auto;
           background: #fff; border: 1px solid #aaa; box-shadow: 0 2px 12px rgba(0,0,0,.2); padding: .5rem 1rem; }
#inspect pre { white-space: pre-wrap; font-size: 12px; }
pre.fingerprint { white-space: pre-wrap; font-size: 12px; background: #f6f6f6; padding: .5rem; }
"""

# Sorting: numbers by data-sort, text otherwise; empty keys (missing figures) last in both
# directions; rows of class "reference" stay first. Clicking a figure cell opens its record.
SCRIPT = """
(function () {
  "use strict";
  var figures = JSON.parse(document.getElementById("qk-figures").textContent);
  var fingerprints = JSON.parse(document.getElementById("qk-fingerprints").textContent);

  function key(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell ? cell.getAttribute("data-sort") : null;
    if (raw === null || raw === "") { return null; }
    return numeric ? parseFloat(raw) : raw.toLowerCase();
  }

  function sortBy(th) {
    var table = th.closest("table");
    var body = table.tBodies[0];
    var col = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "num";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    var pinned = rows.filter(function (r) { return r.classList.contains("reference"); });
    var rest = rows.filter(function (r) { return !r.classList.contains("reference"); });
    rest = rest.map(function (r, i) { return { row: r, key: key(r, col, numeric), i: i }; });
    rest.sort(function (a, b) {
      if (a.key === null || b.key === null) {
        return a.key === b.key ? a.i - b.i : (a.key === null ? 1 : -1);
      }
      var c = a.key < b.key ? -1 : a.key > b.key ? 1 : a.i - b.i;
      return ascending ? c : -c;
    });
    pinned.concat(rest.map(function (x) { return x.row; })).forEach(function (r) { body.appendChild(r); });
  }

  document.querySelectorAll("table.sortable thead th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });

  var panel = document.getElementById("inspect");
  var selected = null;
  document.addEventListener("click", function (event) {
    var cell = event.target.closest("td[data-fig]");
    if (!cell) { return; }
    var fig = figures[parseInt(cell.getAttribute("data-fig"), 10)];
    var record = Object.assign({}, fig, { fingerprint: fingerprints[fig.fingerprint] || fig.fingerprint });
    panel.querySelector("h3").textContent = fig.variant + " on " + fig.engine + ": " + fig.group + " / " + fig.metric;
    panel.querySelector("pre").textContent = JSON.stringify(record, null, 2);
    panel.hidden = false;
    if (selected) { selected.classList.remove("selected"); }
    selected = cell;
    cell.classList.add("selected");
  });
  panel.querySelector("button").addEventListener("click", function () {
    panel.hidden = true;
    if (selected) { selected.classList.remove("selected"); }
  });
})();
"""


def _json_script(id_: str, data: object) -> str:
    # "<" as \u003c: no `</script>` or `<!--` can end or confuse the script element
    blob = json.dumps(data, sort_keys=True, default=str).replace("<", "\\u003c")
    return f'<script type="application/json" id="{id_}">{blob}</script>'


class _Figures:
    """The figures cells point to (by index), with their fingerprints listed once."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.index: dict[int, int] = {}
        self.fingerprints: dict[str, dict] = {}
        self._fp_ids: dict[str, str] = {}

    def fingerprint_id(self, fp: dict) -> str:
        blob = json.dumps(fp, sort_keys=True, default=str)
        if blob not in self._fp_ids:
            self._fp_ids[blob] = f"fp{len(self._fp_ids) + 1}"
            self.fingerprints[self._fp_ids[blob]] = fp
        return self._fp_ids[blob]

    def add(self, f: Figure) -> int:
        if id(f) not in self.index:
            self.index[id(f)] = len(self.records)
            self.records.append({"variant": f.variant, "engine": f.engine, "group": f.group, "metric": f.metric,
                                 "params": f.params, "value": f.value, "uncertainty": f.uncertainty, "n": f.n, "unit": f.unit,
                                 "status": f.status, "reason": f.reason, "settings": f.settings,
                                 "conditions": f.conditions, "fingerprint": self.fingerprint_id(f.fingerprint),
                                 "measured_at": f.measured_at, "key": f.key})
        return self.index[id(f)]

    def tooltip(self, f: Figure) -> str:
        fp = self.fingerprint_id(f.fingerprint)
        lines = [f"{f.group} / {f.quantity}" + (f" ({f.unit})" if f.unit else "") + (f", n={f.n}" if f.n else "")]
        if f.reason:
            lines.append(f"reason: {f.reason}")
        lines += [f"conditions: {json.dumps(f.conditions, sort_keys=True, default=str)}",
                  f"settings: {json.dumps(f.settings, sort_keys=True, default=str)}",
                  f"fingerprint: {fp} ({f.fingerprint.get('hardware', '?')})",
                  f"measured {f.measured_at}; click for the full record"]
        return "\n".join(lines)


def _sort_key(c: Cell) -> str:
    if c.label is not None:
        return c.label
    if c.parts:
        return next((repr(p.value) for p in c.parts if p.value is not None), "")
    return "" if c.value is None else repr(c.value)


def _cell_html(c: Cell, col: Column, figs: _Figures, notes: dict[str, int], anchor: str) -> str:
    classes: list[str] = []
    attrs = {"data-sort": _sort_key(c)}
    if c.label is not None:
        classes.append("label")
        body = escape(c.label)
    elif c.parts:
        body = " / ".join(escape(cell_text(p)) for p in c.parts)
        tips = [figs.tooltip(p.figure) for p in c.parts if p.figure is not None]
        if tips:
            attrs["title"] = "\n\n".join(tips)
    elif c.value is None:
        classes.append("failed" if c.failed else "missing")
        reason = short(c.reason or "not measured")
        if len(reason) > INLINE_REASON:
            k = notes.setdefault(reason, len(notes) + 1)
            body = f'n/a <a href="#{anchor}-note{k}">[{k}]</a>'
        elif reason == "not measured":  # the common case: a dash, the class and the tooltip say it
            body = "—"
        else:
            body = f"n/a ({escape(reason)})"
        attrs["title"] = c.reason or "not measured"
    else:
        classes.append("fig")
        body = escape(number(c))
        if c.tie:
            classes.append("tie")
            body = '<span class="mark mark-tie" title="within noise of the reference">≈</span> ' + body
        if not c.comparable:
            classes.append("incomparable")
            body += ' <span class="mark mark-incomparable" title="measured under other conditions">†</span>'
        if c.floors:
            classes.append("floor")
            body += " " + " ".join(f'<span class="mark mark-floor" title="within the {"engine" if m == "≤E" else "noise"}'
                                   f' floor">{escape(m)}</span>' for m in c.floors)
        if c.flips is not None:
            tip = f"questions lost {c.flips.lost:.0f}, gained {c.flips.gained:.0f}; exact McNemar p={c.flips.p:.2g}"
            body += f' <span class="flips" title="{escape(tip)}">−{c.flips.lost:.0f}/+{c.flips.gained:.0f} ' \
                    f'p={c.flips.p:.2g}</span>'
        if c.failed:  # a value measured by a step that then failed
            classes.append("failed")
            body += " (failed)"
        if c.show_n:
            body += f" (n={c.n})"
    if c.figure is not None:
        attrs["data-fig"] = str(figs.add(c.figure))
        if c.label is None and not c.parts:
            tip = figs.tooltip(c.figure)
            attrs["title"] = f"{attrs['title']}\n\n{tip}" if "title" in attrs else tip
    attr_text = "".join(f' {k}="{escape(v)}"' for k, v in attrs.items())
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{cls}{attr_text}>{body}</td>"


def _header_html(col: Column) -> str:
    numeric = not col.is_label or col.title in ("n", FLOOR_COLUMN)
    tip = []
    if col.metric:
        tip.append(f"{col.group} / {col.quantity}")
    if col.higher_is_better is not None:
        tip.append("higher is better" if col.higher_is_better else "lower is better")
    tip.append("click to sort")
    cls = "" if numeric else ' class="label"'
    return (f'<th{cls} data-type="{"num" if numeric else "text"}" title="{escape("; ".join(tip))}">'
            f"{escape(col.title)}</th>")


def _table_html(table: Table, figs: _Figures, anchor: str, caption: str = "") -> str:
    notes: dict[str, int] = {}
    body = []
    for row in table.rows:
        cls = ' class="reference"' if row.reference else ""
        cells = "".join(_cell_html(c, col, figs, notes, anchor) for c, col in zip(row.cells, table.columns))
        body.append(f"<tr{cls}>{cells}</tr>")
    out = [f'<div class="scroll"><table class="sortable" id="{anchor}">']
    if caption:
        out.append(f"<caption>{escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(_header_html(c) for c in table.columns) + "</tr></thead>")
    out.append("<tbody>" + "\n".join(body) + "</tbody></table></div>")
    if notes:
        out.append('<p>Why cells are empty:</p><ol class="reasons">'
                   + "".join(f'<li id="{anchor}-note{k}" value="{k}">{escape(r)}</li>' for r, k in notes.items())
                   + "</ol>")
    return "\n".join(out)


LEGEND = ('<p class="legend">'
          '<span style="background:var(--tie)">≈ within noise of the reference</span>'
          '<span style="background:var(--incomparable)"><i>† measured under other conditions</i></span>'
          '<span style="color:var(--floor);font-weight:600">≤E / ≤N within the engine / noise floor</span>'
          '<span style="background:var(--failed);color:#8a1f11">n/a: failed</span>'
          '<span style="color:var(--muted)">—: not measured</span>'
          "<span>−a/+b p: questions lost / gained against the reference (exact McNemar p)</span>"
          "</p><p>Click a column header to sort; hover a figure for its conditions, click it for the full "
          "record; hover a point of a plot for its variant and figures.</p>")


class HtmlExporter:
    name = "html"
    suffix = ".html"
    description = "one self-contained HTML page: sortable tables, styled marks, interactive plots"

    def __init__(self, plots: bool = True) -> None:
        self.plots = plots

    def render(self, report: Report) -> str:
        figs = _Figures()
        parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 '<link rel="icon" href="data:,">',  # no favicon request
                 "<title>quantkit leaderboard</title>", f"<style>{CSS}</style></head><body>",
                 "<h1>quantkit leaderboard</h1>", LEGEND]
        for i, section in enumerate(report.sections):
            parts.append(f'<section id="section-{i}">')
            if len(report.sections) > 1:
                parts.append(f"<h2>Compared with {escape(section.reference)}</h2>")
            parts.append(_table_html(leaderboard_table(section), figs, f"board-{i}"))
            parts += [f"<p>{escape(line)}</p>" for line in fidelity_lines(section)]
            if section.fidelity.rows:
                parts.append("<details><summary>Fidelity in detail (KLD in nats; <i>vs</i>: the baseline the model "
                             "is scored against)</summary>")
                parts.append(_table_html(section.fidelity, figs, f"fidelity-{i}"))
                parts.append("</details>")
            detail = section.table.select(lambda c: c.is_label and c.title != "KV cache" or c.detail)
            if any(c.value is not None for r in detail.rows for c in r.cells):
                parts.append("<details><summary>More fidelity statistics</summary>")
                parts.append(_table_html(detail, figs, f"details-{i}"))
                parts.append("</details>")
            parts.append("</section>")
        if self.plots:
            parts.append(self._plots(report))
        if report.probes:
            parts.append("<h2>Probe generations (greedy)</h2>")
            for probe, by_variant in sorted(report.probes.items()):
                parts.append(f"<h3>{escape(probe)}</h3><table><thead><tr><th class=\"label\">variant</th>"
                             "<th class=\"label\">answer</th></tr></thead><tbody>")
                parts += [f'<tr><td class="label">{escape(v)}</td><td class="label" style="white-space:pre-wrap">'
                          f"{escape(answer)}</td></tr>"
                          for v, answer in sorted(by_variant.items(), key=lambda kv: references_first(kv[0]))]
                parts.append("</tbody></table>")
        if report.sweep.rows:
            parts.append("<h2>Temperature sweep (GSM8K)</h2>")
            parts.append(_table_html(report.sweep, figs, "sweep"))
        if report.scaling.rows:
            parts.append("<h2>Replica sweep</h2><p>Layout <code>NxK</code>: N servers of K cores each "
                         "(<code>NxK GPU</code>: of K GPUs each; one server on N GPUs is the engine's own multi-GPU "
                         "mode, vLLM's tensor parallelism), requests round-robin; efficiency: tok/s / (N &times; "
                         "tok/s of one share).</p>")
            parts.append(_table_html(report.scaling, figs, "scaling"))
        if report.stages.rows:
            parts.append("<h2>Stage times</h2><p>Seconds on this machine, newest compare run per model: where a "
                         "compare spends its time, not a property of the model.</p>")
            parts.append(_table_html(report.stages, figs, "stages"))
        parts.append('<h2>Conditions</h2><ul class="notes">'
                     + "".join(f"<li>{escape(line)}</li>" for line in report.notes) + "</ul>")
        parts.append("<h2>Fingerprints</h2>")
        for fp_id, fp in figs.fingerprints.items():
            parts.append(f'<details id="{fp_id}"><summary>{fp_id}: {escape(str(fp.get("hardware", "?")))}</summary>'
                         f'<pre class="fingerprint">{escape(json.dumps(fp, indent=2, sort_keys=True, default=str))}'
                         "</pre></details>")
        parts.append('<aside id="inspect" hidden><button type="button" style="float:right">close</button>'
                     "<h3></h3><pre></pre></aside>")
        parts.append(_json_script("qk-figures", figs.records))
        parts.append(_json_script("qk-fingerprints", figs.fingerprints))
        parts.append(f"<script>{SCRIPT}</script></body></html>")
        return "\n".join(parts) + "\n"

    def _plots(self, report: Report) -> str:
        try:
            from quantkit.results.plots import svg_plots

            plots = svg_plots(report.figures)
        except ImportError as e:  # matplotlib is a core dependency; say so rather than fail the page
            return f"<p>plots not drawn: {escape(str(e))}</p>"
        if not plots:
            return ""
        out = ["<h2>Plots</h2>"]
        for plot, svg in plots:
            out.append(f'<figure class="plot" id="plot-{plot.name}">{svg}<figcaption>{escape(plot.title)}'
                       "</figcaption></figure>")
        return "\n".join(out)
