"""The `quantkit` command line. Thin: parse, call, print; errors carry their fix."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from quantkit.errors import QuantkitError

app = typer.Typer(help="Which quantization should we ship? Build, serve and compare quantized variants.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# Wide enough for the tables when output goes to a file or CI log (rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)


@app.callback()
def _main() -> None:
    from quantkit.execution.procs import terminate_as_interrupt

    terminate_as_interrupt()  # SIGTERM stops engines and removes partial builds, like Ctrl-C


def _fail(e: QuantkitError) -> None:
    from rich.markup import escape

    # escaped: a message quotes user input (a recipe's `[/x]` would be read as rich markup);
    # soft_wrap: each line stays one line in a log, however long
    console.print(f"[red]error:[/] {escape(e.args[0])}", soft_wrap=True)
    if e.hint:
        console.print(f"[yellow]fix:[/] {escape(e.hint)}", soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def setup(
    engines: list[str] | None = typer.Option(None, "--engines", "-e",
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
    recipes: list[str] = typer.Argument(..., help="recipe YAML file(s), e.g. recipes/smollm2_gptq_w4a16.yaml"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a recipe field: key.path=value"),
    force: bool = typer.Option(False, "--force", help="rebuild even if an identical variant exists"),
    executor: str = typer.Option("local", "--executor", help="local: one recipe after another on this machine; "
                                 "ray: all at once on a Ray cluster, one node's CPUs (or one GPU) per build"),
    address: str | None = typer.Option(None, "--address", help="with --executor ray: auto, HOST:PORT, or none "
                                       "for a local Ray instance"),
) -> None:
    """Build quantized variants from recipes (atomically; identical recipes are reused)."""
    from quantkit import builders, sources
    from quantkit.recipes import load_recipe

    if executor not in ("local", "ray") or (address and executor != "ray"):
        console.print(f"[red]error:[/] --executor is local or ray, not {executor!r}" if executor not in ("local", "ray")
                      else "[red]error:[/] --address goes with --executor ray")
        raise typer.Exit(2)
    if executor == "ray":
        from quantkit.execution.ray_builds import build_all
        from quantkit.execution.ray_executor import RayExecutor

        try:
            with RayExecutor(address) as runner:
                outcomes = build_all(recipes, set_ or [], executor=runner, force=force, console=console)
        except QuantkitError as e:
            _fail(e)
        if any(o.error for o in outcomes):
            raise typer.Exit(1)
        return
    for recipe in recipes:
        try:
            r = load_recipe(recipe, set_ or [])
            sources.preflight(r.source)  # a hub model neither cached nor reachable fails now, not in the engine
            variant, reused = builders.build(r, recipe_file=recipe, force=force, console=console)
        except QuantkitError as e:
            _fail(e)
        m = variant.manifest
        verb = "reused" if reused else f"built in {m.get('build_seconds')} s"
        bpw = m.get("bits_per_weight")
        console.print(f"[green]{variant.name}[/] {verb}: {m.get('format')}, "
                      f"{f'{bpw:.2f} bits/weight' if bpw else m.get('bits_per_weight_reason', '')} -> {variant.path}")


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
    engine: str | None = typer.Option(None, "--engine", help="vllm | llamacpp (default: by format)"),
    kv_cache_dtype: str | None = typer.Option(None, "--kv-cache-dtype",
                                                 help="vLLM: fp8, fp8_e4m3, fp8_e5m2; llama.cpp: f16, q8_0, q4_0, ..."),
    opt: list[str] | None = typer.Option(None, "--opt", "-o",
                                            help="engine setting under the engine's own name, e.g. "
                                                 "-o max_model_len=4096, -o n_threads=2"),
) -> None:
    """Serve a variant through its engine's OpenAI-compatible server until Ctrl-C."""
    import time as _time

    from quantkit import loader
    from quantkit.server import EngineServer

    try:
        target = loader.load(variant, engine=engine, settings=_engine_options(opt), kv_cache_dtype=kv_cache_dtype)
        console.print(f"starting {target.engine.name} for [bold]{target.name}[/] (KV cache: {target.kv_cache_type})")
        server = EngineServer(target, host=host, port=port)
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
def compare(
    names: list[str] | None = typer.Argument(None, help="variants to compare (each with its source model as the reference)"),
    all_: bool = typer.Option(False, "--all", help="every complete variant"),
    tasks: str = typer.Option("", "--tasks", help="comma-separated lm-eval tasks: arc_easy, arc_challenge, "
                                                  "hellaswag, mmlu, gsm8k (default: none with --quick, all otherwise)"),
    limit: int | None = typer.Option(None, "--limit", help="documents per task"),
    quick: bool = typer.Option(False, "--quick", help="small windows, batches and limits for a fast pass"),
    force: bool = typer.Option(False, "--force", help="re-measure figures already stored"),
    temperatures: str = typer.Option("", "--temperatures", help="sampling sweep on GSM8K, e.g. 0,0.6,1.0,1.5"),
    top_p: float = typer.Option(1.0, "--top-p", help="top_p for the sampling sweep"),
    samples: int | None = typer.Option(None, "--samples", help="seeded samples per problem in the sweep"),
    sweep_problems: int | None = typer.Option(None, "--sweep-problems",
                                                 help="GSM8K problems in the sweep (default 50; 10 with --quick)"),
    db: str | None = typer.Option(None, "--db", help="results database (default results/quantkit.sqlite)"),
    opt: list[str] | None = typer.Option(None, "--opt", "-o", help="engine setting for every variant, key=value; "
                                         "ENGINE.key=value (e.g. llamacpp.n_threads=1) for one engine's variants"),
    executor: str = typer.Option("local", "--executor", help="where engine workers run: local (subprocesses here) "
                                 "or ray (Ray actors on a cluster's nodes; model files on a shared filesystem, "
                                 "engine envs made by `quantkit setup` on each node)"),
    address: str | None = typer.Option(None, "--address", help="with --executor ray: auto (the cluster this "
                                          "machine joined) or HOST:PORT of its head; default: a local Ray instance"),
    replicas: int = typer.Option(1, "--replicas", help="also run the replica sweep: N servers of 1/N of the cores "
                                 "each (round-robin) against one server on all of them; the leaderboard's scaling "
                                 "table"),
) -> None:
    """Measure fidelity, probes, tasks, speed and memory of variants side by side (resumable)."""
    import contextlib
    from pathlib import Path

    from quantkit.evaluation.compare import CompareConfig
    from quantkit.evaluation.compare import compare as run_compare
    from quantkit.evaluation.tasks import TASKS
    from quantkit.results.store import Store

    if not names and not all_:
        console.print("[red]error:[/] name variants or pass --all")
        raise typer.Exit(2)
    if executor not in ("local", "ray") or (address and executor != "ray"):
        console.print(f"[red]error:[/] --executor is local or ray, not {executor!r}" if executor not in ("local", "ray")
                      else "[red]error:[/] --address goes with --executor ray")
        raise typer.Exit(2)
    chosen = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else ([] if quick else list(TASKS))
    temps = tuple(float(t) for t in temperatures.split(",") if t.strip()) if temperatures else ()
    cfg = CompareConfig.make(quick, tasks=chosen, limit=limit if limit is not None else (20 if quick and chosen else None),
                             force=force, temperatures=temps, top_p=top_p, sweep_samples=samples,
                             sweep_problems=sweep_problems, replicas=replicas)
    try:
        from quantkit import sources
        from quantkit.evaluation.compare import plan

        for reference, _ in plan(names or [], all_):  # hub models neither cached nor reachable fail now
            sources.preflight(sources.reference_spec(reference))
        with contextlib.ExitStack() as stack:
            runner = None
            if executor == "ray":
                from quantkit.execution.ray_executor import RayExecutor

                runner = stack.enter_context(RayExecutor(address))
            run_compare(names or [], cfg, all_=all_, store=Store(Path(db) if db else None), console=console,
                        settings=_engine_options(opt), executor=runner)
    except QuantkitError as e:
        _fail(e)


@app.command()
def leaderboard(
    format_: str = typer.Option("md", "--format", help="export format, from the exporter registry "
                                "(quantkit/results/exporters): md, csv, json, html, or any registered one; "
                                "--formats lists them"),
    out: str | None = typer.Option(None, "--out", help="write to this file instead of printing"),
    plots: str | None = typer.Option(None, "--plots", help="write PNG plots into this folder"),
    db: str | None = typer.Option(None, "--db", help="results database (default results/quantkit.sqlite)"),
    formats: bool = typer.Option(False, "--formats", help="list the registered export formats and exit"),
) -> None:
    """Export the stored results as a leaderboard in any registered format (markdown, CSV, JSON, a
    self-contained HTML page, ...), with optional plots."""
    from pathlib import Path

    from quantkit.results import exporters
    from quantkit.results.store import Store

    if formats:
        for name in exporters.names():
            exporter = exporters.get(name)
            print(f"{name}\t{exporter.suffix}\t{exporter.description}")
        return
    if format_ not in exporters.names():
        console.print(f"[red]error:[/] unknown format {format_!r}; choose one of: {', '.join(exporters.names())}")
        raise typer.Exit(2)
    store = Store(Path(db) if db else None)
    text = exporters.export(store, format_)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")
    else:
        print(text)
    if plots:
        from quantkit.results.plots import write_plots

        for p in write_plots(store, Path(plots)):
            console.print(f"wrote {p}")


@app.command("list")
def list_variants() -> None:
    """List the reference model and every variant, with method, size, bits per weight and state."""
    from rich.table import Table

    from quantkit import safetensors_info, sources, variants

    def amount(value, fmt: str) -> str:
        return fmt.format(value) if value is not None else "-"

    table = Table(title="models")
    for col in ("name", "method", "format", "engine", "size", "bits/weight", "build s", "build peak RSS",
                "build peak GPU", "complete"):
        table.add_column(col)
    if sources.embedded_ready():
        ref = sources.embedded_dir()
        size = safetensors_info.tensor_bytes(ref)
        bpw = 8 * size / safetensors_info.parameter_count(ref)
        table.add_row(f"{sources.EMBEDDED_NAME} (reference)", "bf16", "safetensors", "vllm",
                      f"{size / 2**20:.1f} MiB", f"{bpw:.2f}", "-", "-", "-", "yes")
    for v in variants.all_variants():
        m = v.manifest
        # peak GPU: torch's max_memory_allocated during a CUDA build (llm-compressor, AutoAWQ); "-" on CPU
        table.add_row(v.name, v.method, v.format, m.get("engine", "?"),
                      amount(m.get("weights_bytes") and m["weights_bytes"] / 2**20, "{:.1f} MiB"),
                      amount(m.get("bits_per_weight"), "{:.2f}"), amount(m.get("build_seconds"), "{:.0f}"),
                      amount(m.get("peak_memory_mib"), "{:.0f} MiB"), amount(m.get("peak_gpu_memory_mib"), "{:.0f} MiB"),
                      "[green]yes" if v.complete else "[red]no (incomplete)")
    console.print(table)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
