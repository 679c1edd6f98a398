"""PNG plots from the stored figures (matplotlib): accuracy vs size with the Pareto frontier,
accuracy vs throughput, KL divergence vs bits per weight."""

from __future__ import annotations

from pathlib import Path

from quantkit.results.store import Store


def _series(store: Store, group: str, metric: str) -> dict[str, tuple[float, float | None]]:
    return {f.variant: (f.value, f.uncertainty) for f in store.figures()
            if f.group == group and f.metric == metric and f.status == "ok" and f.value is not None}


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the frontier: no other point is at most as large and at least as accurate (one strictly)."""
    front = []
    for name, x, y in points:
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for n2, x2, y2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


def _accuracy(store: Store) -> tuple[str, dict]:
    tasks = sorted({f.group for f in store.figures() if f.group.startswith("task:") and f.status == "ok"})
    if tasks:
        metric = "acc"
        return f"{tasks[0][5:]} accuracy", _series(store, tasks[0], metric) or _series(store, tasks[0], "exact_match")
    return "top-1 agreement with reference", _series(store, "fidelity", "top1_agreement")


def write_plots(store: Store, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    acc_label, acc = _accuracy(store)
    size = _series(store, "memory", "weights_on_disk_mib")
    speed = _series(store, "speed", "offline_tokens_per_s")
    kld = _series(store, "fidelity", "kld_mean")
    bpw = _series(store, "memory", "bits_per_weight")

    def scatter(xs: dict, ys: dict, xlabel: str, ylabel: str, name: str, frontier: bool = False) -> None:
        common = [n for n in xs if n in ys]
        if not common:
            return
        fig, ax = plt.subplots(figsize=(7, 5))
        for n in common:
            ax.errorbar(xs[n][0], ys[n][0], yerr=ys[n][1] or None, fmt="o", capsize=3)
            ax.annotate(n, (xs[n][0], ys[n][0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if frontier:
            front = sorted((xs[n][0], ys[n][0]) for n in pareto([(n, xs[n][0], ys[n][0]) for n in common]))
            ax.plot([p[0] for p in front], [p[1] for p in front], "r--", label="Pareto frontier")
            ax.legend()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    scatter(size, acc, "weights on disk (MiB)", acc_label, "accuracy_vs_size.png", frontier=True)
    scatter(speed, acc, "offline output tokens/s", acc_label, "accuracy_vs_throughput.png")
    scatter(bpw, kld, "bits per weight", "mean KL divergence from reference (nats)", "kld_vs_bpw.png")
    return written
