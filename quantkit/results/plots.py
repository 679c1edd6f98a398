"""Plots from the stored figures (matplotlib): accuracy vs size with the Pareto frontier,
accuracy vs throughput, KL divergence vs bits per weight.

`write_plots` writes PNG files; `svg_plots` returns the same plots as inline SVG for the HTML
leaderboard, each point carrying an SVG `<title>` (the browser's own hover tooltip: the variant
and its headline figures), so the page needs no script for it.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantkit.results.store import Figure, Store

Series = dict[str, tuple[float, float | None]]


def _figs(source: Store | list[Figure]) -> list[Figure]:
    return source.figures() if isinstance(source, Store) else source


def _series(figs: list[Figure], group: str, metric: str, **params) -> Series:
    return {f.variant: (f.value, f.uncertainty) for f in figs
            if f.group == group and f.metric == metric and f.params == params and f.status == "ok" and f.value is not None}


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the frontier: no other point is at most as large and at least as accurate (one strictly)."""
    front = []
    for name, x, y in points:
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for n2, x2, y2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


def _accuracy(figs: list[Figure]) -> tuple[str, Series]:
    tasks = sorted({str(f.params.get("task")) for f in figs if f.group == "tasks" and f.status == "ok"})
    if tasks:
        task = tasks[0]
        return f"{task} accuracy", _series(figs, "tasks", "acc", task=task) or _series(figs, "tasks", "exact_match", task=task)
    return "top-1 agreement with reference", _series(figs, "fidelity", "top1_agreement")


@dataclass
class Plot:
    name: str  # file stem
    title: str
    xlabel: str
    ylabel: str
    xs: Series
    ys: Series
    frontier: bool = False

    @property
    def points(self) -> list[str]:
        return [n for n in self.xs if n in self.ys]


def plots(source: Store | list[Figure]) -> tuple[list[Plot], dict[str, Series]]:
    """The plots that have points, and every headline series by label (for the hover text)."""
    figs = _figs(source)
    acc_label, acc = _accuracy(figs)
    size = _series(figs, "memory", "weights_on_disk_mib")
    speed = _series(figs, "speed", "offline_tokens_per_s")
    kld = _series(figs, "fidelity", "kld_mean")
    bpw = _series(figs, "memory", "bits_per_weight")
    kld_label = "mean KL divergence from reference (nats)"
    candidates = [
        Plot("accuracy_vs_size", f"{acc_label} vs size", "weights on disk (MiB)", acc_label, size, acc, frontier=True),
        Plot("accuracy_vs_throughput", f"{acc_label} vs throughput", "offline output tokens/s", acc_label, speed, acc),
        Plot("kld_vs_bpw", "KL divergence vs bits per weight", "bits per weight", kld_label, bpw, kld),
    ]
    series = {acc_label: acc, "size MiB": size, "bits/weight": bpw, "KLD mean": kld, "tok/s (offline)": speed}
    return [p for p in candidates if p.points], series


def _draw(plot: Plot, plt: Any, gid_prefix: str = "") -> Any:
    fig, ax = plt.subplots(figsize=(7, 5))
    xs, ys = plot.xs, plot.ys
    for i, n in enumerate(plot.points):
        container = ax.errorbar(xs[n][0], ys[n][0], yerr=ys[n][1] or None, fmt="o", capsize=3)
        if gid_prefix:
            container.lines[0].set_gid(f"{gid_prefix}{i}")
        ax.annotate(n, (xs[n][0], ys[n][0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if plot.frontier:
        front = sorted((xs[n][0], ys[n][0]) for n in pareto([(n, xs[n][0], ys[n][0]) for n in plot.points]))
        ax.plot([p[0] for p in front], [p[1] for p in front], "r--", label="Pareto frontier")
        ax.legend()
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(store: Store | list[Figure], out_dir: Path) -> list[Path]:
    """PNG files, one per plot that has points."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for plot in plots(store)[0]:
        fig = _draw(plot, plt)
        path = out_dir / f"{plot.name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _fmt(v: float, u: float | None) -> str:
    return f"{v:.4g}" + (f" ± {u:.2g}" if u is not None else "")


def hover_text(variant: str, series: dict[str, Series]) -> str:
    """The variant and its headline figures, one per line."""
    return "\n".join([variant] + [f"{label}: {_fmt(*s[variant])}" for label, s in series.items() if variant in s])


def _own_ids(svg: str, prefix: str) -> str:
    """Prefix the SVG's internal ids (marker paths, clip paths) so that several plots inline in one
    page do not share them; ids already carrying `prefix` (the points) stay."""
    ids = [i for i in re.findall(r'id="([^"]+)"', svg) if not i.startswith(prefix)]
    if not ids:
        return svg
    pattern = re.compile(r'(id="|#)(' + "|".join(map(re.escape, sorted(ids, key=len, reverse=True))) + r')(?=[")])')
    return pattern.sub(lambda m: m.group(1) + prefix + m.group(2), svg)


def svg_plots(source: Store | list[Figure]) -> list[tuple[Plot, str]]:
    """(plot, inline SVG) per plot; every point is an SVG group with a `<title>` to hover."""
    import matplotlib

    plt = _pyplot()
    found, series = plots(source)
    out = []
    # text stays text (smaller, searchable); fixed ids and no date: the same store gives the same page
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "quantkit"}):
        for k, plot in enumerate(found):
            prefix = f"qk-p{k}-pt"
            fig = _draw(plot, plt, gid_prefix=prefix)
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
            plt.close(fig)
            svg = buf.getvalue()
            svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
            svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
            svg = _own_ids(svg, f"qk-p{k}-")
            for i, n in enumerate(plot.points):
                tip = html.escape(hover_text(n, series), quote=False)
                svg = svg.replace(f'<g id="{prefix}{i}">', f'<g id="{prefix}{i}" class="qk-point"><title>{tip}</title>', 1)
            svg = re.sub(r'<svg ', f'<svg role="img" aria-label="{html.escape(plot.title)}" ', svg, count=1)
            out.append((plot, svg))
    return out
