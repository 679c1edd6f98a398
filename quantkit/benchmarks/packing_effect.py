"""What packed calibration buys (issue 12 item 1): each llm-compressor recipe built twice, with its
calibration packed (samples x seq_len tokens, the default) and one passage per sample (`packing:
passages`, llm-compressor's own loading: a LAMBADA passage is ~80 tokens, so a 32 x 256 recipe
calibrates on ~2.6k tokens), then both scored by compare's fidelity group against the reference.
A benchmark that prints figures, not a timed test.

    .venv/bin/python -m quantkit.benchmarks.packing_effect [RECIPE ...] [--windows 64] [--db results/packing.sqlite]

Default recipes: the SmolLM2 GPTQ W4A16, AWQ W4A16 and INT8 W8A8 (SmoothQuant + GPTQ) ones. Builds go
through the quantkit CLI (`--set calibration.packing=passages --set name=<name>-passages`; an
identical build is reused); the fidelity windows are compare's defaults (64 x 512, second halves
scored), since `--quick`'s 4 x 256 cannot resolve differences of this size. A variant this machine
cannot serve (W4A16 on a CPU without AVX-512) prints its one-line reason instead of figures.

The difference in mean KLD is judged against the two standard errors combined as if independent:
both variants are scored on the same positions, whose KLs are positively correlated, so the true
standard error of the difference is smaller and the z printed is conservative.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from quantkit import paths

DEFAULT_RECIPES = ("smollm2_gptq_w4a16.yaml", "smollm2_awq_w4a16.yaml", "smollm2_int8_w8a8.yaml")
METRICS = (("kld_mean", "KLD mean", "{:.5f}"), ("top1_agreement", "same top-1", "{:.4f}"),
           ("ppl_ratio", "PPL ratio", "{:.4f}"))


def build(recipe: Path, extra: list[str]) -> str:
    """Build through the CLI; the variant's name."""
    from quantkit.recipes import load_recipe

    name = load_recipe(recipe, extra).name
    cmd = [sys.executable, "-m", "quantkit.cli", "build", str(recipe), *[a for s in extra for a in ("--set", s)]]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*", default=[str(paths.recipes_dir() / r) for r in DEFAULT_RECIPES])
    ap.add_argument("--windows", type=int, default=64, help="fidelity windows of --window-len tokens (compare's default 64)")
    ap.add_argument("--window-len", type=int, default=512)
    ap.add_argument("--db", default="results/packing.sqlite")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from quantkit.evaluation.compare import CompareConfig, compare
    from quantkit.results.store import Store

    pairs = []
    for r in args.recipes:
        packed = build(Path(r), [])
        passages = build(Path(r), ["calibration.packing=passages", f"name={packed}-passages"])
        pairs.append((packed, passages))
    cfg = CompareConfig(groups=("build", "fidelity"), windows=args.windows, window_len=args.window_len)
    store = compare([n for p in pairs for n in p], cfg, store=Store(Path(args.db)))
    figs = {(f.variant, f.group, f.metric): f for f in store.figures()}

    table = Table(title=f"packed against per-passage calibration: fidelity against the reference "
                        f"({args.windows} x {args.window_len} tokens, second halves scored)")
    for col in ("variant", "packing", "calibration tokens", *(m[1] for m in METRICS), "Δ KLD (passages − packed)", "z"):
        table.add_column(col)
    for packed, passages in pairs:
        kld = [figs.get((n, "fidelity", "kld_mean")) for n in (packed, passages)]
        for n, how in ((packed, "packed"), (passages, "passages")):
            failed = figs.get((n, "fidelity", "failed"))
            tokens = figs.get((n, "build", "calibration_tokens"))
            cells = [f"{tokens.value:.0f}" if tokens and tokens.value is not None else "-"]
            for metric, _, fmt in METRICS:
                f = figs.get((n, "fidelity", metric))
                cells.append(fmt.format(f.value) + (f" ± {f.uncertainty:.5f}" if f.uncertainty else "")
                             if f and f.value is not None else (failed.reason or "failed")[:60] if failed else "-")
            delta = z = "-"
            if how == "passages" and all(k and k.value is not None for k in kld):
                a, b = kld
                assert a is not None and b is not None and a.value is not None and b.value is not None
                d = b.value - a.value
                se = math.hypot(a.uncertainty or 0.0, b.uncertainty or 0.0)
                delta, z = f"{d:+.5f} ({d / a.value:+.1%})", f"{d / se:+.1f}" if se else "-"
            table.add_row(n, how, *cells, delta, z)
    Console(width=200).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
