"""The `quantkit` command line. Thin: parse, call, print; errors carry their fix."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from rich.console import Console

from quantkit.errors import QuantkitError

app = typer.Typer(help="Which quantization should we ship? Build, serve and compare quantized variants.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()


def _fail(e: QuantkitError) -> None:
    console.print(f"[red]error:[/] {e.args[0]}")
    if e.hint:
        console.print(f"[yellow]fix:[/] {e.hint}")
    raise typer.Exit(2)


def _not_yet(what: str, issue: int) -> None:
    console.print(f"[yellow]`quantkit {what}` is not yet available[/] (tracked in issue {issue}).")
    raise typer.Exit(3)


@app.command()
def setup(
    engines: Optional[List[str]] = typer.Option(None, "--engines", "-e",
                                                help="steps to run: data, compressor, llamacpp, vllm, reference "
                                                     "(comma-separated or repeated; default: all)"),
    force: bool = typer.Option(False, "--force", help="rebuild even what is already ready"),
) -> None:
    """Create the engine environments, the data packages and the reference model (idempotent)."""
    from quantkit import setup_steps

    try:
        setup_steps.run(engines, force, console)
    except QuantkitError as e:
        _fail(e)


@app.command()
def doctor(fast: bool = typer.Option(False, "--fast", help="skip importing each engine inside its env")) -> None:
    """Show each engine, whether it is ready, its versions, the hardware, and how to fix what is missing."""
    from quantkit import doctor as doc

    try:
        ok = doc.show(console, probe=not fast)
    except QuantkitError as e:
        _fail(e)
    raise typer.Exit(0 if ok else 1)


@app.command()
def build(
    recipe: str = typer.Argument(..., help="recipe YAML file, e.g. recipes/smollm2_gptq_w4a16.yaml"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a recipe field: key.path=value"),
    force: bool = typer.Option(False, "--force", help="rebuild even if an identical variant exists"),
) -> None:
    """Build a quantized variant from a recipe (atomically; identical recipes are reused)."""
    from quantkit import builders
    from quantkit.recipes import load_recipe

    try:
        r = load_recipe(recipe, set_ or [])
        variant, reused = builders.build(r, recipe_file=recipe, force=force, console=console)
    except QuantkitError as e:
        _fail(e)
    m = variant.manifest
    verb = "reused" if reused else f"built in {m.get('build_seconds')} s"
    bpw = m.get("bits_per_weight")
    console.print(f"[green]{variant.name}[/] {verb}: {m.get('format')}, "
                  f"{'%.2f bits/weight' % bpw if bpw else m.get('bits_per_weight_reason', '')} -> {variant.path}")


@app.command()
def serve(variant: str = typer.Argument(..., help="variant name or folder")) -> None:
    """Serve a variant behind an OpenAI-compatible endpoint."""
    _not_yet("serve", 4)


@app.command()
def compare() -> None:
    """Measure accuracy, memory and speed of variants side by side."""
    _not_yet("compare", 5)


@app.command()
def leaderboard() -> None:
    """Export the measured results as markdown/csv/json, with plots."""
    _not_yet("leaderboard", 5)


@app.command("list")
def list_variants() -> None:
    """List the reference model and every variant, with method, size, bits per weight and state."""
    from rich.table import Table

    from quantkit import safetensors_info, sources, variants

    table = Table(title="models")
    for col in ("name", "method", "format", "engine", "size", "bits/weight", "complete"):
        table.add_column(col)
    if sources.embedded_ready():
        ref = sources.embedded_dir()
        size = safetensors_info.tensor_bytes(ref)
        bpw = 8 * size / safetensors_info.parameter_count(ref)
        table.add_row(f"{sources.EMBEDDED_NAME} (reference)", "bf16", "safetensors", "vllm",
                      f"{size / 2**20:.1f} MiB", f"{bpw:.2f}", "yes")
    for v in variants.all_variants():
        m = v.manifest
        size = m.get("weights_bytes")
        bpw = m.get("bits_per_weight")
        table.add_row(v.name, v.method, v.format, m.get("engine", "?"),
                      f"{size / 2**20:.1f} MiB" if size else "-", f"{bpw:.2f}" if bpw else "-",
                      "[green]yes" if v.complete else "[red]no (incomplete)")
    console.print(table)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
