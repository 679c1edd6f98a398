"""The markdown leaderboard: one table per reference, reasons footnoted, fidelity in detail,
probes, the temperature sweep and the conditions."""

from __future__ import annotations

from quantkit.results.exporters.text import (
    fidelity_lines,
    footnoted_cells,
    leaderboard_table,
    rows,
)
from quantkit.results.report import Report, references_first


class MarkdownExporter:
    name = "md"
    suffix = ".md"
    description = "markdown tables (the README's leaderboard)"

    def render(self, report: Report) -> str:
        md = ["# quantkit leaderboard", ""]
        for section in report.sections:
            table = leaderboard_table(section)
            header = table.header()
            body, reasons = footnoted_cells(table)
            if len(report.sections) > 1:
                md += [f"## Compared with {section.reference}", ""]
            md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            md += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body]
            if reasons:
                md += ["", "Why cells are empty:", ""] + [f"- {r.replace('|', '/')}" for r in reasons]
            md += ["", *fidelity_lines(section), ""]
            if section.fidelity.rows:
                dh = section.fidelity.header()
                md += ["Fidelity in detail (KLD in nats; `vs`: the baseline the model is scored against):", "",
                       "| " + " | ".join(dh) + " |", "|" + "---|" * len(dh)]
                md += ["| " + " | ".join(r) + " |" for r in rows(section.fidelity)] + [""]
        md += ["", "## Probe generations (greedy)", ""]
        for probe, by_variant in sorted(report.probes.items()):
            md += [f"### {probe}", "", "| variant | answer |", "|---|---|"]
            for v, answer in sorted(by_variant.items(), key=lambda kv: references_first(kv[0])):
                md.append(f"| {v} | {' '.join(answer.split()).replace('|', '/')[:300]} |")
            md.append("")
        if report.sweep.rows:
            sh = report.sweep.header()
            md += ["## Temperature sweep (GSM8K)", "", "| " + " | ".join(sh) + " |", "|" + "---|" * len(sh)]
            md += ["| " + " | ".join(r) + " |" for r in rows(report.sweep)] + [""]
        if report.scaling.rows:
            sc = report.scaling.header()
            md += ["## Replica sweep (N data-parallel replicas against one server on the same cores or GPUs)", "",
                   "Layout `NxK`: N servers of K cores each (`NxK GPU`: of K GPUs each; one server on N GPUs is the "
                   "engine's own multi-GPU mode, vLLM's tensor parallelism), requests round-robin; efficiency: "
                   "tok/s / (N x tok/s of one share).", "", "| " + " | ".join(sc) + " |", "|" + "---|" * len(sc)]
            md += ["| " + " | ".join(r) + " |" for r in rows(report.scaling)] + [""]
        if report.stages.rows:
            st = report.stages.header()
            md += ["## Stage times (seconds on this machine, newest compare run per model)", "",
                   "| " + " | ".join(st) + " |", "|" + "---|" * len(st)]
            md += ["| " + " | ".join(r) + " |" for r in rows(report.stages)] + [""]
        md += ["## Conditions", ""] + [f"- {line}" for line in report.notes]
        return "\n".join(md) + "\n"
