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


def _engine_options(opts: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in opts or []:
        if "=" not in item:
            raise QuantkitError(f"--opt {item!r} is not key=value", hint="e.g. --opt max_model_len=4096")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command()
def serve(
    variant: str = typer.Argument(..., help="variant name or folder, or `reference`"),
    port: int = typer.Option(8000, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    engine: Optional[str] = typer.Option(None, "--engine", help="vllm | llamacpp (default: by format)"),
    kv_cache_dtype: Optional[str] = typer.Option(None, "--kv-cache-dtype",
                                                 help="vLLM: fp8, fp8_e4m3, fp8_e5m2; llama.cpp: f16, q8_0, q4_0, ..."),
    opt: Optional[List[str]] = typer.Option(None, "--opt", "-o",
                                            help="engine setting under the engine's own name, e.g. "
                                                 "-o max_model_len=4096, -o n_threads=2"),
) -> None:
    """Serve a variant through its engine's OpenAI-compatible server until Ctrl-C."""
    import signal as _signal
    import time as _time

    from quantkit import loader
    from quantkit.server import EngineServer

    try:
        target = loader.load(variant, engine=engine, settings=_engine_options(opt), kv_cache_dtype=kv_cache_dtype)
        console.print(f"starting {target.engine.name} for [bold]{target.name}[/] (KV cache: {target.kv_cache_type})")
        server = EngineServer(target, host=host, port=port)
        _signal.signal(_signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        with server:
            console.print(f"[green]ready[/]: {server.url}  model: [bold]{server.model_name}[/]  log: {server.log_path}")
            console.print("Ctrl-C stops it.")
            while server.proc is not None and server.proc.poll() is None:
                _time.sleep(1)
            if server.proc is not None:
                raise QuantkitError(f"the server exited (code {server.proc.returncode}); see {server.log_path}")
    except KeyboardInterrupt:
        console.print("stopped.")
    except QuantkitError as e:
        _fail(e)


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
