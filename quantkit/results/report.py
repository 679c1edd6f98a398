"""The typed leaderboard: sections, rows and cells built once from the results store.

Every judgement the leaderboard makes lives here, once: which rows a section has (a variant is
compared with the model it was built from; the same variant on two engines is two rows), which
figure fills a cell, or why none does (a failed group, a failed figure, never measured, measured
without a value), whether a figure is within noise of the reference's (`tie`), whether it was
measured under the reference's conditions at all (`comparable`), whether a KLD is one the engine
or the noise floor alone could produce (`floors`), and the accuracy flips against the reference.

Exporters (quantkit/results/exporters/) only render cells: markdown, CSV and JSON as text
(`≈ 0.45 ± 0.11 †`, exporters/text.py), the HTML leaderboard with CSS classes and the figure's
conditions and fingerprint on demand. A new exporter needs nothing from the store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from quantkit.evaluation.fidelity import below_floor, intervals_overlap
from quantkit.evaluation.stats import tie
from quantkit.results.store import Figure, ParamsKey, Quantity, Store
from quantkit.sources import is_reference_name


@dataclass(frozen=True)
class Column:
    """A leaderboard column: one stored quantity (group, metric, params), or a label (variant, engine ...)."""
    title: str
    group: str = ""
    metric: str = ""
    fmt: str = "{}"
    higher_is_better: bool | None = None
    detail: bool = False  # the full statistics (CSV/JSON and on demand), not the markdown table
    params: ParamsKey = ()  # the metric's parameters, e.g. (("concurrency", 4),)

    @property
    def is_label(self) -> bool:
        return not self.metric

    @property
    def quantity(self) -> Quantity:
        return Quantity(self.group, self.metric, self.params)


# (column title, group, metric, format, higher_is_better)
COLUMNS = [
    Column("bits/weight", "memory", "bits_per_weight", "{:.2f}", None),
    Column("size MiB", "memory", "weights_on_disk_mib", "{:.1f}", None),
    Column("KLD mean", "fidelity", "kld_mean", "{:.4f}", False),
    Column("KLD vs own engine base", "fidelity", "base_kld_mean", "{:.4f}", False),
    Column("KLD p99", "fidelity", "kld_p99", "{:.3f}", False),
    Column("top-1 agree", "fidelity", "top1_agreement", "{:.3f}", True),
    Column("Δp RMS", "fidelity", "dp_rms", "{:.4f}", False),
    Column("PPL", "fidelity", "ppl", "{:.2f}", False),
    Column("PPL ratio", "fidelity", "ppl_ratio", "{:.3f}", False),
    Column("peak RSS MiB", "memory", "peak_rss_mib", "{:.0f}", None),
    # what the figure means per engine is its condition `kv_capacity` (listed in the notes)
    Column("KV tokens", "memory", "kv_capacity_tokens", "{:.0f}", None),
    Column("KV B/token", "memory", "kv_bytes_per_token", "{:.0f}", None),
    Column("tok/s (offline)", "speed", "offline_tokens_per_s", "{:.1f}", True),
    Column("TTFT ms @1", "serving", "ttft_median_ms", "{:.0f}", False, params=(("concurrency", 1),)),
    Column("ITL ms @1", "serving", "itl_median_ms", "{:.1f}", False, params=(("concurrency", 1),)),
    Column("tok/s @4", "serving", "output_tokens_per_s", "{:.1f}", True, params=(("concurrency", 4),)),
    Column("roofline", "roofline", "fraction_of_bound", "{:.2f}", True),
]
FIRST_COLUMNS = 2  # bits/weight and size come before the task columns

# the fidelity statistics in full, for the CSV/JSON table (and the markdown details section)
DETAIL_COLUMNS = [
    Column("KLD median", "fidelity", "kld_median", "{:.5f}", False, detail=True),
    Column("KLD p90", "fidelity", "kld_p90", "{:.4f}", False, detail=True),
    Column("KLD max", "fidelity", "kld_max", "{:.3f}", False, detail=True),
    Column("Δp mean", "fidelity", "dp_mean", "{:.4f}", None, detail=True),
    Column("base KLD p99", "fidelity", "base_kld_p99", "{:.3f}", False, detail=True),
    Column("base top-1 agree", "fidelity", "base_top1_agreement", "{:.3f}", True, detail=True),
    Column("base PPL ratio", "fidelity", "base_ppl_ratio", "{:.3f}", False, detail=True),
]
FLOOR_COLUMN = "floors KLD engine / noise"
LABELS = [Column("variant"), Column("engine"), Column("KV cache")]


@dataclass(frozen=True)
class Flips:
    """Per-question changes of a task score against the reference, with the exact McNemar p."""
    lost: float
    gained: float
    p: float


@dataclass
class Cell:
    """One leaderboard cell. Either a label (`label`), a figure (`value` ± `uncertainty` over `n`
    samples, formatted with `fmt`), a composite of parts shown side by side (`parts`), or missing
    (`value` None, `reason` says why; `failed` when a measurement failed rather than never ran)."""
    value: float | None = None
    uncertainty: float | None = None
    n: int | None = None
    unit: str | None = None
    fmt: str = "{}"
    label: str | None = None
    tie: bool = False  # within 1.96 combined standard errors of the reference's figure ("≈")
    comparable: bool = True  # False: measured under other conditions than the reference's ("†")
    floors: tuple[str, ...] = ()  # "≤E": within the engine floor; "≤N": within the noise floor
    flips: Flips | None = None
    reason: str | None = None
    failed: bool = False
    figure: Figure | None = None  # where the value came from: conditions, settings, fingerprint
    parts: tuple[Cell, ...] = ()
    show_uncertainty: bool = True
    show_n: bool = False

    @property
    def missing(self) -> bool:
        return self.label is None and not self.parts and self.value is None


def label(text: str) -> Cell:
    return Cell(label=text)


def missing(reason: str, *, failed: bool = False, figure: Figure | None = None) -> Cell:
    return Cell(reason=reason, failed=failed, figure=figure)


def of(f: Figure | None, fmt: str, *, reason: str = "not measured", **kw) -> Cell:
    """A figure's cell, or a missing one saying `reason` when there is no figure or it has no value."""
    if f is None or f.value is None:
        return Cell(reason=reason, figure=f, n=f.n if f is not None else None, **kw)
    return Cell(value=f.value, uncertainty=f.uncertainty, n=f.n, unit=f.unit, fmt=fmt, figure=f, **kw)


@dataclass
class Row:
    variant: str
    engine: str
    reference: bool  # the section's reference model itself
    cells: list[Cell]


@dataclass
class Table:
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)

    def header(self) -> list[str]:
        return [c.title for c in self.columns]

    def select(self, keep) -> Table:
        """The same table with only the columns `keep(column)` accepts."""
        idx = [i for i, c in enumerate(self.columns) if keep(c)]
        return Table([self.columns[i] for i in idx],
                     [Row(r.variant, r.engine, r.reference, [r.cells[i] for i in idx]) for r in self.rows])


@dataclass
class Floors:
    """The section's KLD floors: the reference re-scored against itself (noise), and each engine's
    unquantized baseline against the reference (engine)."""
    noise: Figure | None = None
    engine: dict[str, Figure] = field(default_factory=dict)


@dataclass
class Section:
    reference: str  # the model the section's variants are compared with
    table: Table  # the leaderboard table, detail columns included (Column.detail)
    fidelity: Table  # one row per (model, baseline it is scored against)
    floors: Floors
    overlapping: list[tuple[str, str]]  # variants whose KLD 95% intervals overlap


@dataclass
class Report:
    sections: list[Section]
    probes: dict[str, dict[str, str]]  # probe -> variant -> greedy answer
    sweep: Table
    notes: list[str]
    figures: list[Figure]
    stages: Table = field(default_factory=lambda: Table([]))  # wall time of engine starts and groups
    scaling: Table = field(default_factory=lambda: Table([]))  # the replica sweep: layouts x concurrency


# ---------------------------------------------------------------- building


def section_of(f: Figure) -> str:
    return f.conditions.get("compared_with", "reference")


def references_first(name: str) -> tuple[bool, str]:
    return not is_reference_name(name), name


def section_names(figs: list[Figure]) -> list[str]:
    """One table per reference model (a variant is compared with the model it was built from)."""
    return sorted({section_of(f) for f in figs}, key=lambda r: (r != "reference", r)) or ["reference"]


TASKS = "tasks"


def task_columns(figs: list[Figure]) -> list[Column]:
    """One column per (task, metric) (not its per-question companions `metric:per_doc`, `:lost`...)."""
    tasks = sorted({(str(f.params.get("task")), f.metric) for f in figs
                    if f.group == TASKS and f.status == "ok" and ":" not in f.metric})
    return [Column(f"{t} {m}", TASKS, m, "{:.3f}", True, params=(("task", t),)) for t, m in tasks]


# groups the columns above (and the fidelity details, probes and sweep sections) already show;
# any other group's figures get a column each, so a new measurement group needs no change here
SHOWN_GROUPS = {"memory", "fidelity", "speed", "serving", "roofline", "probes", "sweep", "tasks", "scaling"}
# compare's own clock (group "stages": seconds per engine start and group on this machine): not a
# property of the model, so its own table, never leaderboard columns
STAGES = "stages"


# Titles and formats for quantities shown only where some model has them (the GPU memory of a
# build exists only for CUDA builds); any other quantity of such a group gets a title from its name.
AUTO_COLUMN_TITLES = {
    Quantity("build", "build_seconds"): ("build s", "{:.0f}"),
    Quantity("build", "build_peak_rss_mib"): ("build peak RSS MiB", "{:.0f}"),
    Quantity("build", "build_peak_gpu_mib"): ("build peak GPU MiB", "{:.0f}"),
    Quantity("build", "calibration_tokens"): ("calibration tokens", "{:.0f}"),
}


def group_columns(figs: list[Figure]) -> list[Column]:
    """One column per quantity (metric and parameters) of a group the leaderboard has no fixed
    columns for (not its companion figures `metric:...`), where some model has a value for it."""
    quantities = sorted({f.quantity for f in figs if f.status == "ok" and f.value is not None
                         and f.group not in SHOWN_GROUPS | {STAGES} and ":" not in f.metric},
                        key=lambda q: (q.group, list(AUTO_COLUMN_TITLES).index(q) if q in AUTO_COLUMN_TITLES
                                       else len(AUTO_COLUMN_TITLES), q.metric, repr(q.params)))
    cols = []
    for q in quantities:
        title, fmt = AUTO_COLUMN_TITLES.get(q) or (str(q) if q.metric.startswith(q.group) else f"{q.group} {q}", "{:.4g}")
        cols.append(Column(title, q.group, q.metric, fmt, None, params=q.params))
    return cols


def comparable(f: Figure, r: Figure) -> bool:
    """Measured the same way as the reference's figure (same group setup; offline speed also needs the
    same engine, whose batching differs)?"""
    if f.conditions.get("setup") != r.conditions.get("setup"):
        return False
    return f.group != "speed" or f.engine == r.engine


PPL_RATIO = Quantity("fidelity", "ppl_ratio")


def within_noise(f: Figure, r: Figure, vals: dict[Quantity, Figure]) -> bool:
    if f.metric == "ppl" and PPL_RATIO in vals:  # paired: the same tokens for both
        ratio = vals[PPL_RATIO]
        return ratio.uncertainty is not None and tie(_value(ratio), ratio.uncertainty, 1.0, 0.0)
    return tie(_value(f), f.uncertainty, _value(r), r.uncertainty)


def _value(f: Figure) -> float:
    """The value of a figure known to have one (the caller checked `value is not None`)."""
    assert f.value is not None, f
    return f.value


def floors(figs: list[Figure], section: str = "reference") -> Floors:
    out = Floors()
    for f in figs:
        if section_of(f) != section or f.status != "ok" or f.group != "fidelity" or f.params:
            continue  # (figures with parameters are KLD by confidence bucket, not the whole set's)
        if f.metric == "noise_kld_mean" and f.variant == section:
            out.noise = f
        role = str(f.conditions.get("role", ""))
        if f.metric == "kld_mean" and role.startswith("engine baseline of "):
            out.engine[f.engine] = f
    return out


def floor_marks(f: Figure, metric: str, engine: str, fl: Floors) -> tuple[str, ...]:
    """`≤E`: a KLD from the reference the engine difference alone could produce (a variant on an
    engine other than the reference's); `≤N`: one the reference's own re-scoring noise could."""
    marks = []
    eng = fl.engine.get(engine)
    value = _value(f)
    if metric == "kld_mean" and eng is not None and eng.value is not None and eng.variant != f.variant and \
            below_floor(value, f.uncertainty, eng.value, eng.uncertainty):
        marks.append("≤E")
    noise = fl.noise
    if noise is not None and noise.value is not None and value > 0 and \
            below_floor(value, f.uncertainty, noise.value, noise.uncertainty):
        marks.append("≤N")
    return tuple(marks)


def flips(vals: dict[Quantity, Figure], q: Quantity) -> Flips | None:
    lost, gained, p = (vals.get(Quantity(q.group, f"{q.metric}:{k}", q.params)) for k in ("lost", "gained", "mcnemar_p"))
    if lost is None or gained is None or p is None:
        return None
    return Flips(_value(lost), _value(gained), _value(p))


def _floor_part(f: Figure | None) -> Cell:
    return label("-") if f is None or f.value is None else of(f, "{:.2g}", show_uncertainty=False)


# the engine that scores a section's reference when the section has no row of its own for it
# (compare always measures the reference first, so only hand-made stores lack one)
DEFAULT_REFERENCE_ENGINE = "vllm"


def floor_cell(engine: str, fl: Floors, reference_engine: str = DEFAULT_REFERENCE_ENGINE) -> Cell:
    """The floors a row's KLD is read against: its engine's baseline and the noise floor."""
    eng = fl.engine.get(engine)
    # on the engine that scored the reference, the reference itself is the engine baseline: no floor
    engine_part = label("0 (same engine)") if eng is None and engine == reference_engine else _floor_part(eng)
    noise_part = _floor_part(fl.noise)
    if engine_part.label == noise_part.label == "-":
        return missing("not measured")
    return Cell(parts=(engine_part, noise_part))


def main_table(figs: list[Figure], section: str, fl: Floors) -> Table:
    """Rows are (variant, engine): the same variant measured on two engines gets two rows."""
    figs = [f for f in figs if section_of(f) == section]
    by: dict[tuple[str, str], dict[Quantity, Figure]] = defaultdict(dict)
    failures: dict[tuple[str, str], dict[str | Quantity, Figure]] = defaultdict(dict)
    for fig in figs:
        key = (fig.variant, fig.engine)
        if fig.status == "failed":  # a whole group (metric "failed"), or one figure of a group
            failures[key][fig.group if fig.metric == "failed" else fig.quantity] = fig
        else:
            by[key][fig.quantity] = fig
    names = sorted(set(by) | set(failures), key=lambda k: (k[0] != section, k))
    cols = (COLUMNS[:FIRST_COLUMNS] + task_columns(figs) + COLUMNS[FIRST_COLUMNS:] + group_columns(figs)
            + DETAIL_COLUMNS)
    refs = [k for k in names if k[0] == section]
    ref = by.get(refs[0], {}) if refs else {}
    reference_engine = refs[0][1] if refs else DEFAULT_REFERENCE_ENGINE
    table = Table(LABELS + cols + [Column(FLOOR_COLUMN)])
    for key in names:
        variant, engine = key
        vals = by.get(key, {})
        any_fig = next(iter(vals.values()), None)
        cells = [label(variant), label(engine), label(any_fig.settings.get("kv_cache_type", "?") if any_fig else "?")]
        for col in cols:
            q = col.quantity
            group, metric = q.group, q.metric
            f = vals.get(q)
            if f is None or f.value is None:
                failed = failures.get(key, {})
                source = "serving" if group == "roofline" else group  # roofline comes from the serving sweep
                why = failed.get(q) or failed.get(group) or failed.get(source)
                if why is not None:
                    cells.append(missing(why.reason or "failed", failed=True, figure=why))
                else:
                    cells.append(missing("not measured" if f is None else "not reported", figure=f))
                continue
            cell = of(f, col.fmt)
            r = ref.get(q)
            if variant != section and r is not None and r.value is not None:
                if not comparable(f, r):
                    cell.comparable = False
                elif within_noise(f, r, vals):
                    cell.tie = True
            if variant != section and metric in ("kld_mean", "base_kld_mean"):
                cell.floors = floor_marks(f, metric, engine, fl)
            if group == TASKS:
                cell.flips = flips(vals, q)
            cells.append(cell)
        cells.append(floor_cell(engine, fl, reference_engine))
        table.rows.append(Row(variant, engine, variant == section, cells))
    return table


def overlapping_pairs(figs: list[Figure], section: str = "reference", metric: str = "kld_mean") -> list[tuple[str, str]]:
    """Pairs of models of a section whose KLD 95% intervals (± 1.96 standard errors) overlap: the
    data cannot order them."""
    ordered = sorted((f for f in figs if section_of(f) == section and f.group == "fidelity"
                      and f.metric == metric and not f.params and f.status == "ok" and f.variant != section
                      and f.value is not None), key=_value)
    return [(a.variant, b.variant) for i, a in enumerate(ordered) for b in ordered[i + 1:]
            if intervals_overlap(_value(a), a.uncertainty, _value(b), b.uncertainty)]


_DETAIL_STATS = (("KLD mean", "kld_mean", "{:.4g}"), ("median", "kld_median", "{:.4g}"), ("p90", "kld_p90", "{:.4g}"),
                 ("p99", "kld_p99", "{:.4g}"), ("max", "kld_max", "{:.4g}"), ("same top-1", "top1_agreement", "{:.4f}"),
                 ("Δp mean", "dp_mean", "{:.4f}"), ("Δp RMS", "dp_rms", "{:.4f}"), ("PPL ratio", "ppl_ratio", "{:.4f}"))


def fidelity_table(figs: list[Figure], section: str = "reference") -> Table:
    """One row per (model, baseline): the llama-perplexity statistics and KLD by the baseline's
    top-1 probability."""
    figs = [f for f in figs if section_of(f) == section and f.group == "fidelity" and f.status == "ok"]
    by: dict[tuple[str, str], dict[tuple[str, ParamsKey], Figure]] = defaultdict(dict)
    for f in figs:
        by[(f.variant, f.engine)][(f.metric, f.quantity.params)] = f
    # KLD by the baseline's top-1 probability: figures with parameters top1_p_lo, top1_p_hi
    buckets = sorted({f.quantity.params for f in figs if "top1_p_lo" in f.params}, key=lambda b: dict(b)["top1_p_lo"])
    table = Table([Column("variant"), Column("engine"), Column("vs"), Column("n")]
                  + [Column(t, "fidelity", m, fmt) for t, m, fmt in _DETAIL_STATS]
                  + [Column(f"KLD @ top-1 p {dict(b)['top1_p_lo']:g}-{dict(b)['top1_p_hi']:g}", "fidelity", "kld_mean",
                            "{:.4g}", params=b) for b in buckets])
    for (variant, engine), m in sorted(by.items(), key=lambda kv: references_first(kv[0][0])):
        for prefix, vs in (("", "reference"), ("base_", "own engine base"), ("noise_", "itself (noise)")):
            if (prefix + "kld_mean", ()) not in m or (prefix == "base_" and variant == section):
                continue
            own = {(k[len(prefix):], p): f for (k, p), f in m.items() if k.startswith(prefix)}
            cells = [label(variant), label(engine), label(vs), label(str(own[("kld_mean", ())].n))]
            cells += [of(own.get((metric, ())), fmt, reason="none") for _, metric, fmt in _DETAIL_STATS]
            for b in buckets:
                conf = own.get(("kld_mean", b))
                cells.append(of(conf, "{:.4g}", reason="none", show_n=conf is not None))
            table.rows.append(Row(variant, engine, variant == section and vs == "reference", cells))
    return table


def sweep_table(figs: list[Figure]) -> Table:
    """Variants x temperatures: accuracy ± se and diversity per cell."""
    by: dict[str, dict[float, dict[str, Figure]]] = defaultdict(lambda: defaultdict(dict))
    engines: dict[str, str] = {}
    for f in figs:
        if f.group == "sweep" and f.status == "ok" and "temperature" in f.params:
            by[f.variant][float(f.params["temperature"])][f.metric] = f
            engines[f.variant] = f.engine
    temps = sorted({t for v in by.values() for t in v})
    table = Table([Column("variant")] + [Column(f"T={t:g} acc / diversity", "sweep", "accuracy", "{:.3f}", True,
                                                params=(("temperature", t),)) for t in temps])
    for v in sorted(by, key=references_first):
        cells = [label(v)]
        for t in temps:
            a, d = by[v][t].get("accuracy"), by[v][t].get("diversity")
            if a and d:
                cells.append(Cell(parts=(of(a, "{:.3f}"), of(d, "{:.2f}", show_uncertainty=False)),
                                  value=a.value, uncertainty=a.uncertainty, n=a.n, figure=a))
            else:
                cells.append(missing("not measured"))
        table.rows.append(Row(v, engines[v], is_reference_name(v), cells))
    return table


SCALING = "scaling"


def scaling_table(figs: list[Figure]) -> Table:
    """The replica sweep: one row per (variant, engine, layout), in the order measured (one share,
    N replicas, one server on N shares); per concurrency the output tokens/s (± half the spread of
    the repeats), the median ITL and the scaling efficiency throughput / (N x one share's)."""
    by: dict[tuple[str, str, str], dict[tuple[str, int], Figure]] = defaultdict(dict)
    for f in figs:
        if f.group == SCALING and f.status == "ok" and "layout" in f.params:
            by[(f.variant, f.engine, str(f.params["layout"]))][(f.metric, int(f.params["concurrency"]))] = f
    levels = sorted({c for v in by.values() for _, c in v})
    per_level = (("tok/s", "output_tokens_per_s", "{:.1f}", True), ("ITL ms", "itl_median_ms", "{:.1f}", False),
                 ("efficiency", "scaling_efficiency", "{:.2f}", True))
    table = Table([Column("variant"), Column("engine"), Column("layout")]
                  + [Column(f"{title} @{c}", SCALING, metric, fmt, better, params=(("concurrency", c),))
                     for c in levels for title, metric, fmt, better in per_level])
    for (variant, engine, layout), m in sorted(by.items(), key=lambda kv: references_first(kv[0][0])):
        cells = [label(variant), label(engine), label(layout)]
        for c in levels:
            for _, metric, fmt, _ in per_level:
                fig = m.get((metric, c))
                reason = "the unit" if metric == "scaling_efficiency" and fig is None else "not measured"
                cells.append(of(fig, fmt, reason=reason, show_uncertainty=metric == "output_tokens_per_s"))
        table.rows.append(Row(variant, engine, is_reference_name(variant), cells))
    return table


def stage_table(figs: list[Figure]) -> Table:
    """Seconds per engine start and per group, per model, of the newest compare run that measured it
    (wall time on this machine: where a compare spends its time, not a property of the model)."""
    by: dict[tuple[str, str], dict[str, Figure]] = defaultdict(dict)
    for f in figs:
        if f.group == STAGES and f.status == "ok":
            by[(f.variant, f.engine)][f.metric] = f
    stages = sorted({m for v in by.values() for m in v}, key=lambda m: (not m.startswith("start:"), m))
    table = Table([Column("variant"), Column("engine")]
                  + [Column(f"{m} s", STAGES, m, "{:.1f}", False) for m in stages])
    for (variant, engine), m in sorted(by.items(), key=lambda kv: (references_first(kv[0][0]), kv[0][1])):
        cells = [label(variant), label(engine)]
        for stage in stages:
            timed = m.get(stage)
            cells.append(of(timed, "{:.1f}", reason="did not run", show_uncertainty=False))
            if timed is not None and timed.conditions.get("outcome") == "failed":
                cells[-1].failed = True
                cells[-1].reason = "failed"
        table.rows.append(Row(variant, engine, is_reference_name(variant), cells))
    return table


def probes(figs: list[Figure]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for f in figs:
        if f.group == "probes" and f.status == "ok":
            out[str(f.params.get("probe", f.metric))][f.variant] = f.text or ""
    return out


def notes(figs: list[Figure]) -> list[str]:
    if not figs:
        return ["no figures measured yet"]
    seen: dict[str, Figure] = {}  # the conditions of each group, and of each task (one line each)
    for f in figs:
        if f.status == "ok":
            key = f"task:{f.params.get('task')}" if f.group == TASKS else f.group
            if key not in seen or (seen[key].value is None and f.value is not None):  # a measured figure's, if any
                seen[key] = f
    lines = []
    fp = figs[0].fingerprint
    lines.append(f"hardware: {fp.get('hardware')}")
    for env, versions in fp.get("versions", {}).items():
        lines.append(f"{env} env: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    for group, f in sorted(seen.items()):
        if group not in ("memory", "tasks", STAGES):  # memory's figures say their own conditions
            lines.append(f"{group}: n={f.n}; " + json.dumps(f.conditions, sort_keys=True))
    kv = {f.engine: str(f.conditions["kv_capacity"]) for f in figs
          if f.metric == "kv_capacity_tokens" and f.status == "ok" and f.conditions.get("kv_capacity")}
    if kv:
        lines.append("KV tokens: the KV cache capacity each engine reports, from "
                     + "; ".join(f"{engine}: {source}" for engine, source in sorted(kv.items())))
    lines.append("the reference is SmolLM2-135M-Instruct dequantized from Q4_1 when the embedded default is used; "
                 "all losses are relative to it")
    lines.append("KL divergence: exact over the baseline's top-K token ids plus one tail bucket, with both "
                 "models' probabilities computed from their full vocabularies (a lower bound on the full KL; "
                 "quantkit/evaluation/fidelity.py); `KLD mean` is against the reference, `KLD vs own engine base` "
                 "against the variant's engine's unquantized baseline (llama.cpp: the f16 GGUF; vLLM: the "
                 "reference itself); `−a/+b p=` after a task accuracy: questions the reference got right and the "
                 "variant wrong / the reverse, with the exact McNemar p-value; `≈` marks a difference from the reference within 1.96 "
                 "combined standard errors (PPL: the paired standard error of PPL/PPL(reference) over the same "
                 "tokens); ± is a standard error, or half the min-max spread for speed; `†` marks a figure "
                 "measured under other conditions than the reference's (another setup, or offline speed on "
                 "another engine), which is never marked as a tie")
    return lines


def section(figs: list[Figure], name: str) -> Section:
    fl = floors(figs, name)
    return Section(name, main_table(figs, name, fl), fidelity_table(figs, name), fl, overlapping_pairs(figs, name))


def build(store: Store) -> Report:
    """The whole report, read from the store once."""
    figs = store.figures()
    return Report([section(figs, name) for name in section_names(figs)], probes(figs), sweep_table(figs),
                  notes(figs), figs, stage_table(figs), scaling_table(figs))
