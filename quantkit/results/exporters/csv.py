"""The CSV leaderboard: every section's rows in one table with every fidelity statistic, and the
reference each row is compared with as the last column."""

from __future__ import annotations

import csv
import io

from quantkit.results.exporters.text import full_table
from quantkit.results.report import Report


class CsvExporter:
    name = "csv"
    suffix = ".csv"
    description = "one CSV table, every section and fidelity statistic"

    def render(self, report: Report) -> str:
        header, rows = full_table(report)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()
