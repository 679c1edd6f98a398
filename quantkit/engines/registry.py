"""The engines quantkit knows, by name, loaded lazily (after lm-evaluation-harness's lm_eval/api/registry.py).

An engine registers a "module:Class" string (imported on first use, so listing engines imports no
engine's core module until it is asked for), a class, or an instance:

    from quantkit.engines import registry
    registry.register("sglang", "my_package.sglang_engine:SGLangEngine")

Installed packages can also register through the entry-point group `quantkit.engines`
(name = "module:Class"). The loader, the environments, `setup` and `doctor` loop over this registry
and never name an engine; which engine serves a format is `for_format`. The mechanics (lazy import,
entry points) are quantkit.registry's; an unknown or unloadable engine is a ConfigError, a name
taken by another engine a ValueError.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Union

from quantkit.errors import ConfigError
from quantkit.registry import Registry, describe, folded

if TYPE_CHECKING:
    from quantkit.engines.base import Engine

EngineRef = Union[str, type, "Engine"]

# Built in, in setup order (llama.cpp's environment before vLLM's).
_BUILTIN: dict[str, str] = {
    "llamacpp": "quantkit.engines.llamacpp.engine:LlamaCppEngine",
    "vllm": "quantkit.engines.vllm.engine:VllmEngine",
}
ENTRY_POINT_GROUP = "quantkit.engines"


def _engine(name: str, obj: object) -> Engine:
    """An Engine subclass made into its instance, checked to be an Engine that calls itself `name`."""
    from quantkit.engines.base import Engine

    if isinstance(obj, type) and issubclass(obj, Engine):
        obj = obj()
    if not isinstance(obj, Engine):
        raise ConfigError(f"engine {name!r}: {describe(obj)} is not a quantkit.engines.base.Engine")
    if obj.name != name:
        raise ConfigError(f"engine registered as {name!r} calls itself {obj.name!r}")
    return obj


_engines: Registry[Engine] = Registry("engine", _BUILTIN, make=_engine, entry_point_group=ENTRY_POINT_GROUP,
                                      error=ConfigError, duplicate_error=folded(ValueError))


def register(name: str, ref: EngineRef, *, replace: bool = False) -> None:
    """Register engine `name`: "module:Class", an Engine subclass or an instance. Lazy for strings."""
    _engines.register(name, ref, replace=replace)


def unregister(name: str) -> None:
    _engines.unregister(name)


def registered(name: str, ref: EngineRef) -> AbstractContextManager[Engine]:
    """Register `name` for the duration of a block (tests), and yield the engine."""
    return _engines.registered(name, ref)


def names() -> list[str]:
    """Registered engine names, built-ins first, in registration order."""
    return _engines.names()


def get(name: str) -> Engine:
    return _engines.get(name)


def engines() -> list[Engine]:
    return [get(n) for n in names()]


def serving(fmt: str) -> list[Engine]:
    """Every engine that can run format `fmt`, the default first."""
    return [e for e in engines() if fmt in e.formats]


def for_format(fmt: str) -> Engine:
    """The engine that runs format `fmt` unless another is asked for: the first registered that serves it."""
    able = serving(fmt)
    if not able:
        known = sorted({f for e in engines() for f in e.formats})
        raise ConfigError(f"no engine runs the {fmt!r} format", hint=f"formats engines run: {', '.join(known)}")
    return able[0]


def for_env(env: str) -> Engine | None:
    """The engine whose environment is `env`, if any."""
    return next((e for e in engines() if e.env == env), None)
