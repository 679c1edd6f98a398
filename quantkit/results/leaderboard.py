"""Leaderboard: pivot the stored figures into one table (reference first), probes, and notes.

Reads only the results store. A cell is a measured value (± its uncertainty), a `≈` mark where
it is within noise of the reference (1.96 combined standard errors), or the stated reason it is
missing. Fidelity cells are also read against two floors measured in the same compare: the noise
floor (the reference re-scored against itself with another batch composition) and the engine
floor (an engine's unquantized baseline, e.g. the f16 GGUF on llama.cpp, against the reference):
`≤N` / `≤E` mark a KLD that the floor alone could produce.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

from quantkit.evaluation.fidelity import below_floor, intervals_overlap
from quantkit.evaluation.stats import tie
from quantkit.results.store import Figure, Store, as_dict
from quantkit.sources import is_reference_name

# (column title, group, metric, format, higher_is_better)
COLUMNS = [
    ("bits/weight", "memory", "bits_per_weight", "{:.2f}", None),
    ("size MiB", "memory", "weights_on_disk_mib", "{:.1f}", None),
    ("KLD mean", "fidelity", "kld_mean", "{:.4f}", False),
    ("KLD vs own engine base", "fidelity", "base_kld_mean", "{:.4f}", False),
    ("KLD p99", "fidelity", "kld_p99", "{:.3f}", False),
    ("top-1 agree", "fidelity", "top1_agreement", "{:.3f}", True),
    ("Δp RMS", "fidelity", "dp_rms", "{:.4f}", False),
    ("PPL", "fidelity", "ppl", "{:.2f}", False),
    ("PPL ratio", "fidelity", "ppl_ratio", "{:.3f}", False),
    ("peak RSS MiB", "memory", "peak_rss_mib", "{:.0f}", None),
    ("KV tokens (vLLM: capacity; llama.cpp: n_ctx)", "memory", "kv_capacity_tokens", "{:.0f}", None),
    ("KV B/token", "memory", "kv_bytes_per_token", "{:.0f}", None),
    ("tok/s (offline)", "speed", "offline_tokens_per_s", "{:.1f}", True),
    ("TTFT ms @1", "serving", "ttft_median_ms@1", "{:.0f}", False),
    ("ITL ms @1", "serving", "itl_median_ms@1", "{:.1f}", False),
    ("tok/s @4", "serving", "output_tokens_per_s@4", "{:.1f}", True),
    ("roofline", "roofline", "fraction_of_bound", "{:.2f}", True),
]


# the fidelity statistics in full, for the CSV/JSON table and the markdown details section
DETAIL_COLUMNS = [
    ("KLD median", "fidelity", "kld_median", "{:.5f}", False),
    ("KLD p90", "fidelity", "kld_p90", "{:.4f}", False),
    ("KLD max", "fidelity", "kld_max", "{:.3f}", False),
    ("Δp mean", "fidelity", "dp_mean", "{:.4f}", None),
    ("base KLD p99", "fidelity", "base_kld_p99", "{:.3f}", False),
    ("base top-1 agree", "fidelity", "base_top1_agreement", "{:.3f}", True),
    ("base PPL ratio", "fidelity", "base_ppl_ratio", "{:.3f}", False),
]
FLOOR_COLUMN = "floors KLD engine / noise"


def _task_columns(figs: list[Figure]) -> list[tuple]:
    """One column per task metric (not its per-question companions `metric:per_doc`, `:lost`...)."""
    tasks = sorted({(f.group, f.metric) for f in figs
                    if f.group.startswith("task:") and f.status == "ok" and ":" not in f.metric})
    return [(f"{g[5:]} {m}", g, m, "{:.3f}", True) for g, m in tasks]


def _references_first(name: str) -> tuple[bool, str]:
    return not is_reference_name(name), name


def _section(f: Figure) -> str:
    return f.conditions.get("compared_with", "reference")


def sections(store: Store) -> list[str]:
    """One table per reference model (a variant is compared with the model it was built from)."""
    return sorted({_section(f) for f in store.figures()}, key=lambda r: (r != "reference", r)) or ["reference"]


def _rows(store: Store, section: str = "reference") -> tuple[list[tuple[str, str]], dict, list[tuple], list[Figure]]:
    """Rows are (variant, engine): the same variant measured on two engines gets two rows."""
    figs = [f for f in store.figures() if _section(f) == section]
    by = defaultdict(dict)
    failures = defaultdict(dict)
    for f in figs:
        key = (f.variant, f.engine)
        if f.status == "failed":  # a whole group (metric "failed"), or one figure of a group
            failures[key][f.group if f.metric == "failed" else (f.group, f.metric)] = f.reason
        else:
            by[key][(f.group, f.metric)] = f
    names = sorted(set(by) | set(failures), key=lambda k: (k[0] != section, k))
    cols = COLUMNS[:2] + _task_columns(figs) + COLUMNS[2:]
    return names, {"values": by, "failures": failures}, cols, figs


def _comparable(f: Figure, r: Figure) -> bool:
    """Measured the same way as the reference's figure (same group setup; offline speed also needs the
    same engine, whose batching differs)?"""
    if f.conditions.get("setup") != r.conditions.get("setup"):
        return False
    return f.group != "speed" or f.engine == r.engine


def _within_noise(f: Figure, r: Figure, vals: dict) -> bool:
    if f.metric == "ppl" and ("fidelity", "ppl_ratio") in vals:  # paired: the same tokens for both
        ratio = vals[("fidelity", "ppl_ratio")]
        return ratio.uncertainty is not None and tie(ratio.value, ratio.uncertainty, 1.0, 0.0)
    return tie(f.value, f.uncertainty, r.value, r.uncertainty)


def _short(reason: str, limit: int = 240) -> str:
    text = " ".join(reason.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def floors(store: Store, section: str = "reference") -> dict:
    """{"noise": the reference's noise-floor KLD figure, "engine": {engine: its baseline's KLD
    figure against the reference}} of one section (absent where not measured)."""
    out: dict = {"noise": None, "engine": {}}
    for f in store.figures():
        if _section(f) != section or f.status != "ok" or f.group != "fidelity":
            continue
        if f.metric == "noise_kld_mean" and f.variant == section:
            out["noise"] = f
        role = str(f.conditions.get("role", ""))
        if f.metric == "kld_mean" and role.startswith("engine baseline of "):
            out["engine"][f.engine] = f
    return out


def _floor_text(f: Figure | None) -> str:
    return "-" if f is None or f.value is None else f"{f.value:.2g}"


def _floor_marks(f: Figure, metric: str, engine: str, fl: dict) -> str:
    """`≤E`: a KLD from the reference the engine difference alone could produce (a variant on an
    engine other than the reference's); `≤N`: one the reference's own re-scoring noise could."""
    marks = []
    eng = fl["engine"].get(engine)
    if metric == "kld_mean" and eng is not None and eng.variant != f.variant and \
            below_floor(f.value, f.uncertainty, eng.value, eng.uncertainty):
        marks.append("≤E")
    noise = fl["noise"]
    if noise is not None and f.value > 0 and below_floor(f.value, f.uncertainty, noise.value, noise.uncertainty):
        marks.append("≤N")
    return (" " + " ".join(marks)) if marks else ""


def _flip_text(vals: dict, group: str, metric: str) -> str:
    lost, gained, p = (vals.get((group, f"{metric}:{k}")) for k in ("lost", "gained", "mcnemar_p"))
    if lost is None or gained is None or p is None:
        return ""
    return f" −{lost.value:.0f}/+{gained.value:.0f} p={p.value:.2g}"


def table(store: Store, section: str = "reference", *, details: bool = False) -> tuple[list[str], list[list[str]]]:
    """The section's table; `details` adds every fidelity statistic and the floors (CSV/JSON)."""
    names, data, cols, _ = _rows(store, section)
    if details:
        cols = cols + DETAIL_COLUMNS
    header = ["variant", "engine", "KV cache"] + [c[0] for c in cols] + [FLOOR_COLUMN]
    refs = [k for k in names if k[0] == section]
    ref = data["values"].get(refs[0], {}) if refs else {}
    fl = floors(store, section)
    out = []
    for key in names:
        n, engine = key
        vals = data["values"].get(key, {})
        any_fig = next(iter(vals.values()), None)
        kv = any_fig.settings.get("kv_cache_type", "?") if any_fig else "?"
        row = [n, engine, kv]
        for title, group, metric, fmt, _ in cols:
            f = vals.get((group, metric))
            if f is None or f.value is None:
                failed = data["failures"].get(key, {})
                # task:* figures come from the "tasks" group, roofline from "serving"
                source = "tasks" if group.startswith("task:") else "serving" if group == "roofline" else group
                reason = (failed.get((group, metric)) or failed.get(group) or failed.get(source)
                          or ("not measured" if f is None else "not reported"))
                row.append(f"n/a ({_short(reason)})")
                continue
            cell = fmt.format(f.value)
            if f.uncertainty is not None:
                cell += " ± " + fmt.format(f.uncertainty)
            r = ref.get((group, metric))
            if n != section and r is not None and r.value is not None:
                if not _comparable(f, r):
                    cell += " †"
                elif _within_noise(f, r, vals):
                    cell = "≈ " + cell
            if n != section and metric in ("kld_mean", "base_kld_mean"):
                cell += _floor_marks(f, metric, engine, fl)
            if group.startswith("task:"):
                cell += _flip_text(vals, group, metric)
            row.append(cell)
        eng = fl["engine"].get(engine)
        engine_floor = "0 (same engine)" if eng is None and engine == "vllm" else _floor_text(eng)
        noise_floor = _floor_text(fl["noise"])
        row.append("n/a (not measured)" if engine_floor == noise_floor == "-" else f"{engine_floor} / {noise_floor}")
        out.append(row)
    return header, out


def overlapping_pairs(store: Store, section: str = "reference", metric: str = "kld_mean") -> list[tuple[str, str]]:
    """Pairs of models of a section whose KLD 95% intervals (± 1.96 standard errors) overlap: the
    data cannot order them."""
    figs = sorted((f for f in store.figures() if _section(f) == section and f.group == "fidelity"
                   and f.metric == metric and f.status == "ok" and f.variant != section
                   and f.value is not None), key=lambda f: f.value)
    return [(a.variant, b.variant) for i, a in enumerate(figs) for b in figs[i + 1:]
            if intervals_overlap(a.value, a.uncertainty, b.value, b.uncertainty)]


def _cell(f: Figure | None, fmt: str) -> str:
    if f is None or f.value is None:
        return "n/a (none)"
    return fmt.format(f.value) + (f" ± {fmt.format(f.uncertainty)}" if f.uncertainty is not None else "")


def _detail_row(variant: str, engine: str, label: str, m: dict[str, Figure], buckets: list[str]) -> list[str]:
    def conf(b: str) -> str:
        f = m.get(f"kld_mean@conf={b}")
        return _cell(f, "{:.4g}") + (f" (n={f.n})" if f else "")

    return ([variant, engine, label, str(m["kld_mean"].n)]
            + [_cell(m.get(k), fmt) for k, fmt in (("kld_mean", "{:.4g}"), ("kld_median", "{:.4g}"),
                                                   ("kld_p90", "{:.4g}"), ("kld_p99", "{:.4g}"), ("kld_max", "{:.4g}"),
                                                   ("top1_agreement", "{:.4f}"), ("dp_mean", "{:.4f}"),
                                                   ("dp_rms", "{:.4f}"), ("ppl_ratio", "{:.4f}"))]
            + [conf(b) for b in buckets])


def fidelity_details(store: Store, section: str = "reference") -> tuple[list[str], list[list[str]]]:
    """One row per (model, baseline): the llama-perplexity statistics and KLD by the baseline's
    top-1 probability."""
    figs = [f for f in store.figures() if _section(f) == section and f.group == "fidelity" and f.status == "ok"]
    by: dict[tuple[str, str], dict[str, Figure]] = defaultdict(dict)
    for f in figs:
        by[(f.variant, f.engine)][f.metric] = f
    buckets = sorted({m.split("@conf=")[1] for f in figs for m in [f.metric] if "@conf=" in m},
                     key=lambda b: float(b.split("-")[0]))
    header = ["variant", "engine", "vs", "n", "KLD mean", "median", "p90", "p99", "max", "same top-1", "Δp mean",
              "Δp RMS", "PPL ratio"] + [f"KLD @ top-1 p {b}" for b in buckets]

    rows = []
    for (variant, engine), m in sorted(by.items(), key=lambda kv: _references_first(kv[0][0])):
        for prefix, label in (("", "reference"), ("base_", "own engine base"), ("noise_", "itself (noise)")):
            if prefix + "kld_mean" not in m or (prefix == "base_" and variant == section):
                continue
            rows.append(_detail_row(variant, engine, label, {k[len(prefix):]: f for k, f in m.items()
                                                             if k.startswith(prefix)}, buckets))
    return header, rows


def notes(store: Store) -> list[str]:
    figs = store.figures()
    if not figs:
        return ["no figures measured yet"]
    seen = {}
    for f in figs:
        if f.status == "ok" and f.group not in seen:
            seen[f.group] = f
    lines = []
    fp = figs[0].fingerprint
    lines.append(f"hardware: {fp.get('hardware')}")
    for env, versions in fp.get("versions", {}).items():
        lines.append(f"{env} env: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    for group, f in sorted(seen.items()):
        if group.startswith("task:") or group in ("fidelity", "speed", "probes", "serving", "roofline", "sweep"):
            lines.append(f"{group}: n={f.n}; " + json.dumps(f.conditions, sort_keys=True))
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


def probes(store: Store) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for f in store.figures():
        if f.group == "probes" and f.status == "ok":
            out[f.metric.removeprefix("probe:")][f.variant] = f.text or ""
    return out


def sweep_table(store: Store) -> tuple[list[str], list[list[str]]]:
    """Variants x temperatures: 'accuracy ± se / diversity' per cell."""
    cells: dict[str, dict[str, dict[str, Figure]]] = defaultdict(lambda: defaultdict(dict))
    for f in store.figures():
        if f.group == "sweep" and f.status == "ok":
            kind, temp = f.metric.split("@T=")
            cells[f.variant][temp][kind] = f
    temps = sorted({t for v in cells.values() for t in v}, key=float)
    header = ["variant"] + [f"T={t} acc / diversity" for t in temps]
    rows = []
    for v in sorted(cells, key=_references_first):
        row = [v]
        for t in temps:
            a, d = cells[v][t].get("accuracy"), cells[v][t].get("diversity")
            row.append(f"{a.value:.3f} ± {a.uncertainty:.3f} / {d.value:.2f}" if a and d else "n/a (not measured)")
        rows.append(row)
    return header, rows


def footnoted(rows: list[list[str]], inline: int = 24) -> tuple[list[list[str]], list[str]]:
    """Long reasons in `n/a (...)` cells become `n/a [k]` with the reason once, under the table."""
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


def _fidelity_lines(store: Store, section: str) -> list[str]:
    fl = floors(store, section)
    lines = []
    noise = fl["noise"]
    parts = [f"noise floor {_fmt_floor(noise)} (the reference re-scored one window per call)"] if noise else []
    parts += [f"engine floor of {engine} {_fmt_floor(f)} ({f.variant} against the reference)"
              for engine, f in sorted(fl["engine"].items())]
    if parts:
        lines.append("KLD floors: " + "; ".join(parts) + ". `≤E` / `≤N`: a KLD within 1.96 combined standard "
                     "errors of (or below) that floor.")
    pairs = overlapping_pairs(store, section)
    if pairs:
        lines.append("KLD mean 95% intervals overlap (not ordered by this data): "
                     + "; ".join(f"{a} ~ {b}" for a, b in pairs) + ".")
    return lines


def _fmt_floor(f: Figure) -> str:
    return f"{f.value:.3g}" + (f" ± {f.uncertainty:.2g}" if f.uncertainty is not None else "")


def to_markdown(store: Store) -> str:
    md = ["# quantkit leaderboard", ""]
    all_sections = sections(store)
    for section in all_sections:
        header, rows = table(store, section)
        rows, reasons = footnoted(rows)
        if len(all_sections) > 1:
            md += [f"## Compared with {section}", ""]
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
        if reasons:
            md += ["", "Why cells are empty:", ""] + [f"- {r.replace('|', '/')}" for r in reasons]
        md += ["", *_fidelity_lines(store, section), ""]
        dh, drows = fidelity_details(store, section)
        if drows:
            md += ["Fidelity in detail (KLD in nats; `vs`: the baseline the model is scored against):", "",
                   "| " + " | ".join(dh) + " |", "|" + "---|" * len(dh)]
            md += ["| " + " | ".join(r) + " |" for r in drows] + [""]
    md += ["", "## Probe generations (greedy)", ""]
    for probe, by_variant in sorted(probes(store).items()):
        md.append(f"### {probe}")
        md.append("")
        md.append("| variant | answer |")
        md.append("|---|---|")
        for v, text in sorted(by_variant.items(), key=lambda kv: _references_first(kv[0])):
            md.append(f"| {v} | {' '.join(text.split()).replace('|', '/')[:300]} |")
        md.append("")
    sh, srows = sweep_table(store)
    if srows:
        md += ["## Temperature sweep (GSM8K)", "", "| " + " | ".join(sh) + " |", "|" + "---|" * len(sh)]
        md += ["| " + " | ".join(r) + " |" for r in srows] + [""]
    md += ["## Conditions", ""] + [f"- {line}" for line in notes(store)]
    return "\n".join(md) + "\n"


def full_table(store: Store) -> tuple[list[str], list[list[str]]]:
    """Every section's rows in one table, with the reference each row is compared with as the last
    column (the task columns are the union over sections)."""
    parts = [(section, *table(store, section, details=True)) for section in sections(store)]
    header = list(dict.fromkeys(h for _, hs, _ in parts for h in hs)) + ["compared with"]
    rows = [[dict(zip(hs, r)).get(h, "n/a (not measured)") for h in header[:-1]] + [section]
            for section, hs, rs in parts for r in rs]
    return header, rows


def to_csv(store: Store) -> str:
    header, rows = full_table(store)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def to_json(store: Store) -> str:
    header, rows = full_table(store)
    sh, srows = sweep_table(store)
    fid = {section: dict(zip(("header", "rows"), fidelity_details(store, section))) | {
        "overlapping_kld_pairs": overlapping_pairs(store, section),
        "floors": {k: (as_dict(v) if isinstance(v, Figure) else {e: as_dict(f) for e, f in v.items()})
                   for k, v in floors(store, section).items() if v}} for section in sections(store)}
    return json.dumps({"table": {"header": header, "rows": rows}, "probes": probes(store), "notes": notes(store),
                       "fidelity": fid,
                       "sweep": {"header": sh, "rows": srows},
                       "figures": [as_dict(f) for f in store.figures()]}, indent=2, default=str)


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}
