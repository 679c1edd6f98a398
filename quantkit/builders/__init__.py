"""Build a variant from a recipe: one builder per method kind (quantkit.builders.registry), one atomic folder each."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from quantkit import atomic, paths, sources, variants
from quantkit.builders import registry
from quantkit.envs.steps import track_peak_rss
from quantkit.recipes import Recipe

Builder = Callable[[Recipe, sources.Source, Path, Progress, TaskID], dict]


def _builder(kind: str) -> Builder:
    """The build function registered for method `kind` (ConfigError naming the known kinds if none)."""
    return registry.get(kind).function()


def _reusable(recipe: Recipe, source: sources.Source) -> variants.Variant | None:
    v = variants.read(variants.variant_dir(recipe.name))
    if v.complete and v.manifest.get("recipe_fingerprint") == recipe.fingerprint() \
            and v.manifest.get("source", {}).get("sha256") == source.identity().get("sha256"):
        return v
    return None


def warn_if_unservable(recipe: Recipe, console: Console) -> str | None:
    """Say before a build (minutes for GPTQ / AWQ) when the engine that would serve the result cannot
    run it on this machine; the build still goes on (the variant may be meant for another machine)."""
    from quantkit import capability, hardware

    try:
        scheme = capability.scheme_of_recipe(recipe.method)
    except KeyError:  # a method kind capability's table does not know: nothing to say
        return None
    engine = registry.for_method(recipe.method).engine(recipe.method)
    verdict = capability.verdict(engine.name, scheme, hardware.detect())
    if verdict.ok:
        return None
    console.print(f"[yellow]warning[/]: {recipe.name} is built, but cannot be served on this machine: "
                  f"{verdict.reason}", soft_wrap=True)
    return verdict.reason


def build(recipe: Recipe, *, recipe_file: str | None = None, force: bool = False,
          console: Console | None = None) -> tuple[variants.Variant, bool]:
    """Build `recipe` (or reuse an identical finished build). Returns (variant, reused)."""
    from quantkit.builders.common import manifest_skeleton

    registry.for_method(recipe.method, recipe_file or recipe.name)  # an unknown kind fails before any work
    source = sources.resolve(recipe.source)
    atomic.sweep_partials(paths.variants_dir())
    if not force and (existing := _reusable(recipe, source)):
        return existing, True
    console = console or Console()
    warn_if_unservable(recipe, console)
    manifest = manifest_skeleton(recipe, source, recipe_file)
    final = variants.variant_dir(recipe.name)
    with Progress(SpinnerColumn(), TextColumn(f"[bold]{recipe.name}"), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console) as progress:
        task = progress.add_task(recipe.name, total=1, status="starting")
        t0 = time.time()
        with atomic.atomic_dir(final, replace=True) as tmp, track_peak_rss() as peak:
            result = _builder(recipe.method.kind)(recipe, source, tmp, progress, task)
            manifest.update(result)
            manifest["build_seconds"] = round(time.time() - t0, 1)
            # The largest resident set of any step (workers and llama.cpp tools do the heavy work).
            manifest["peak_memory_mib"] = peak["mib"]
            manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            manifest["status"] = "complete"  # written last, inside the folder that is renamed on success
            variants.write_manifest(tmp, manifest)
        progress.update(task, completed=1, status="[green]done")
    return variants.read(final), False
