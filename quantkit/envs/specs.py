"""What each environment holds. Pure data; hardware decides an engine's flavour.

Environments come from two places: each registered engine's `env_spec(hw)` (quantkit.engines.registry,
in registration order), and the build-tool environments below, which no engine serves from
(`compressor`: llm-compressor and llama.cpp's converter; `autoawq`, optional). More tool
environments register with `register_env`. Nothing here names an engine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.errors import ConfigError
from quantkit.hardware import Hardware, detect

REQUIREMENTS_DIR = Path(__file__).resolve().parent / "requirements"

LLAMA_CPP_PYTHON_VERSION = "0.3.36"


@dataclass(frozen=True)
class EnvSpec:
    name: str
    purpose: str
    requirements: str  # file name under envs/requirements/
    versions_of: tuple[str, ...]  # distributions whose versions doctor shows
    import_check: str  # module that must import for the env to count as ready
    remove_after_install: tuple[str, ...] = ()
    pip_env: dict[str, str] = field(default_factory=dict)
    # A native build made before the env (a module with is_built(), build(progress, task),
    # built_info() and doctor_detail(); e.g. "quantkit.envs.llamacpp_build").
    native_build: str | None = None
    # Runtime libraries the engine runs faster with but works without (see manager.ensure_extras):
    # pip requirements (a file under envs/requirements/) and Debian packages whose shared libraries
    # are unpacked into the env's lib/ (no root needed; `apt-get download` + `dpkg-deb -x`). Kept out
    # of `requirements` so that adding them never invalidates an env that already works.
    extras: str | None = None
    debian_libs: tuple[tuple[str, str], ...] = ()  # (package, library file glob)
    # Every process run in the env (manager.runtime_env): variables set, variables set unless the
    # user set them, and libraries from the env's lib/ to LD_PRELOAD when present (the variable
    # `preload_switch` set to 0 turns preloading off).
    env_vars: dict[str, str] = field(default_factory=dict)
    env_defaults: dict[str, str] = field(default_factory=dict)
    preload: tuple[str, ...] = ()
    preload_switch: str | None = None
    # An interpreter that exists already (an engine installed elsewhere, a test engine): nothing is
    # created; the env is ready when `import_check` imports in it.
    python: str | None = None
    optional: bool = False  # set up only when asked for

    @property
    def requirements_path(self) -> Path:
        return REQUIREMENTS_DIR / self.requirements

    def requirements_text(self) -> str:
        return self.requirements_path.read_text(encoding="utf-8")

    @property
    def external(self) -> bool:
        return self.python is not None


def _compressor(hw: Hardware) -> EnvSpec:
    return EnvSpec(
        name="compressor", purpose="build AWQ / GPTQ / FP8 / INT8 (llm-compressor), convert HF -> GGUF",
        requirements="compressor.txt",
        versions_of=("llmcompressor", "compressed-tensors", "transformers", "torch", "gguf"),
        import_check="llmcompressor",
    )


def _autoawq(hw: Hardware) -> EnvSpec:
    if not hw.has_cuda:
        raise ConfigError("the autoawq environment needs CUDA: AutoAWQ builds and runs only on NVIDIA GPUs",
                          hint="on CPU use AWQ through llm-compressor (method.backend: llmcompressor)")
    return EnvSpec(name="autoawq", purpose="AWQ through AutoAWQ (CUDA only)", requirements="autoawq-cuda.txt",
                   versions_of=("autoawq", "torch", "transformers"), import_check="awq", optional=True)


# Build-tool environments: name -> (factory, optional). Set up before the engines' (the reference
# model is made in `compressor`).
_TOOL_ENVS: dict[str, tuple[Callable[[Hardware], EnvSpec], bool]] = {
    "compressor": (_compressor, False),
    "autoawq": (_autoawq, True),
}


def register_env(name: str, factory: Callable[[Hardware], EnvSpec], *, optional: bool = False) -> None:
    """A build-tool environment (an engine's own comes from its env_spec)."""
    _TOOL_ENVS[name] = (factory, optional)


def unregister_env(name: str) -> None:
    _TOOL_ENVS.pop(name, None)


def _engine_envs() -> dict[str, Callable[[Hardware], EnvSpec]]:
    from quantkit.engines import registry

    out: dict[str, Callable[[Hardware], EnvSpec]] = {}
    for engine in registry.engines():
        out.setdefault(engine.env, engine.env_spec)
    return out


def env_names(*, optional: bool = False) -> tuple[str, ...]:
    """Environment names in setup order: build tools, then each engine's; optional ones last when asked."""
    tools = [n for n, (_, opt) in _TOOL_ENVS.items() if not opt]
    later = [n for n, (_, opt) in _TOOL_ENVS.items() if opt] if optional else []
    return tuple(dict.fromkeys([*tools, *_engine_envs(), *later]))


def optional_env_names() -> tuple[str, ...]:
    return tuple(n for n, (_, opt) in _TOOL_ENVS.items() if opt)


def specs(hw: Hardware | None = None) -> list[EnvSpec]:
    """Every environment set up by default, in setup order."""
    hw = hw or detect()
    return [spec(n, hw) for n in env_names()]


def spec(name: str, hw: Hardware | None = None) -> EnvSpec:
    hw = hw or detect()
    if name in _TOOL_ENVS:
        return _TOOL_ENVS[name][0](hw)
    engine_envs = _engine_envs()
    if name in engine_envs:
        return engine_envs[name](hw)
    raise ConfigError(f"unknown engine environment {name!r}",
                      hint=f"choose one of: {', '.join(env_names(optional=True))}")


def this_interpreter(name: str, purpose: str, import_check: str = "json") -> EnvSpec:
    """An environment that is the interpreter running quantkit (stdlib workers, test engines)."""
    return EnvSpec(name=name, purpose=purpose, requirements="", versions_of=(), import_check=import_check,
                   python=sys.executable)


def __getattr__(attr: str) -> tuple[str, ...]:
    # Old constants, computed from the registries when read.
    if attr == "ENGINE_NAMES":
        return env_names()
    if attr == "OPTIONAL_ENGINE_NAMES":
        return optional_env_names()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
