"""Pick the engine for a variant (or the reference), validate its settings, map the KV cache type.

Every engine question goes to the engine (quantkit.engines.base.Engine) found in the registry
(quantkit.engines.registry): which one serves a format, its platform defaults, its KV cache names,
whether this machine can run the model. Nothing here names an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from quantkit import capability, sources, variants
from quantkit.engines import registry
from quantkit.engines.base import Engine
from quantkit.errors import CannotRunHereError, ConfigError
from quantkit.hardware import Hardware, detect


@dataclass(frozen=True)
class Target:
    """Something runnable: which model file/folder, in which engine, with which settings."""

    name: str
    model_path: Path
    format: str
    engine: Engine
    settings: BaseModel
    kv_cache_type: str

    def worker_settings(self) -> dict:
        return self.engine.worker_settings(self.model_path, self.settings)


def locate(name: str) -> tuple[str, Path, str]:
    """(display name, model path, format) of the reference, a variant name or a variant folder."""
    as_path = Path(name)
    if as_path.suffix == ".gguf" and as_path.is_file():
        return as_path.stem, as_path, "gguf"
    if sources.is_reference_name(name):  # the embedded default, or another source model (folder or hub id)
        spec = sources.reference_spec(name)
        return sources.reference_name(spec), sources.materialize(sources.resolve(spec)), "safetensors"
    v = variants.get(name)
    if v.format == "gguf":
        return v.name, v.path / v.manifest["gguf_file"], "gguf"
    if v.format == "bnb-on-load":
        return v.name, Path(v.manifest["load"]["model"]), "bnb-on-load"
    return v.name, v.path, v.format


def default_engine(fmt: str) -> Engine:
    """The engine that runs format `fmt` unless another is asked for."""
    return registry.for_format(fmt)


def apply_kv_cache(engine: Engine, raw: dict, kv: str | None) -> dict:
    """Map `--kv-cache-dtype` onto the engine's own setting names."""
    if kv is None:
        return raw
    return engine.map_kv_cache(raw, kv.lower())


def platform_defaults(engine: Engine, fmt: str, hw: Hardware, schemes: tuple[str, ...] = ()) -> dict:
    """Defaults that depend on the machine (every one ends up in the figures' settings)."""
    return engine.platform_defaults(fmt, hw, schemes)


def _manifest(name: str) -> dict:
    """The variant manifest behind `name` ({} for a reference or a bare GGUF file)."""
    as_path = Path(name)
    if (as_path.suffix == ".gguf" and as_path.is_file()) or sources.is_reference_name(name):
        return {}
    return variants.get(name).manifest


def load(name: str, *, engine: str | None = None, settings: dict | None = None,
         kv_cache_dtype: str | None = None, hw: Hardware | None = None) -> Target:
    hw = hw or detect()
    display, path, fmt = locate(name)
    if engine is not None:
        eng = registry.get(engine)
        if fmt not in eng.formats:
            able = [e.name for e in registry.serving(fmt)]
            raise ConfigError(f"{display} is a {fmt} model, which {engine} cannot run",
                              hint=f"engines that can: {', '.join(able) or 'none registered'}")
    else:
        eng = default_engine(fmt)
    # what the variant's manifest asks of the engine (vLLM: load bitsandbytes variants quantizing)
    settings = {**eng.model_settings(display, fmt, _manifest(name), hw), **(settings or {})}
    schemes = capability.schemes_of_model(path, fmt)
    raw = {**platform_defaults(eng, fmt, hw, schemes), **settings}
    validated = eng.settings(apply_kv_cache(eng, raw, kv_cache_dtype))
    kv_type = eng.kv_cache_type(validated)
    runs = eng.can_run(path, fmt, hw, validated)
    if not runs.ok:
        raise CannotRunHereError(display, runs.reason, hint=_CANNOT_HINT)
    return Target(display, path, fmt, eng, validated, kv_type)


_CANNOT_HINT = ("run it on a CPU with AVX-512 or a CUDA GPU; `quantkit doctor` lists what this machine serves "
                "(INT8 W8A8 and every GGUF run on any x86-64 CPU)")
