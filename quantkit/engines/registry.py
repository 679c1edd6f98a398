"""The engines quantkit knows, by name, loaded lazily (after lm-evaluation-harness's lm_eval/api/registry.py).

An engine registers a "module:Class" string (imported on first use, so listing engines imports no
engine's core module until it is asked for), a class, or an instance:

    from quantkit.engines import registry
    registry.register("sglang", "my_package.sglang_engine:SGLangEngine")

Installed packages can also register through the entry-point group `quantkit.engines`
(name = "module:Class"). The loader, the environments, `setup` and `doctor` loop over this registry
and never name an engine; which engine serves a format is `for_format`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Union

from quantkit.errors import ConfigError

if TYPE_CHECKING:
    from quantkit.engines.base import Engine

EngineRef = Union[str, type, "Engine"]

# Built in, in setup order (llama.cpp's environment before vLLM's).
_BUILTIN: dict[str, str] = {
    "llamacpp": "quantkit.engines.llamacpp.engine:LlamaCppEngine",
    "vllm": "quantkit.engines.vllm.engine:VllmEngine",
}
ENTRY_POINT_GROUP = "quantkit.engines"

_refs: dict[str, EngineRef] = dict(_BUILTIN)
_loaded: dict[str, Engine] = {}
_entry_points_read = False


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _refs.setdefault(ep.name, ep.value)


def register(name: str, ref: EngineRef, *, replace: bool = False) -> None:
    """Register engine `name`: "module:Class", an Engine subclass or an instance. Lazy for strings."""
    if not replace and name in _refs and _refs[name] != ref:
        raise ValueError(f"engine {name!r} is registered already ({_refs[name]!r})")
    _refs[name] = ref
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    _refs.pop(name, None)
    _loaded.pop(name, None)


@contextlib.contextmanager
def registered(name: str, ref: EngineRef) -> Iterator[Engine]:
    """Register `name` for the duration of a block (tests), and yield the engine."""
    previous = _refs.get(name)
    register(name, ref, replace=True)
    try:
        yield get(name)
    finally:
        unregister(name)
        if previous is not None:
            _refs[name] = previous


def _instantiate(name: str, ref: EngineRef) -> Engine:
    from quantkit.engines.base import Engine

    obj: object = ref
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        if not attr:
            raise ConfigError(f"engine {name!r}: {ref!r} is not \"module:Class\"")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"engine {name!r}: cannot import {ref!r} ({type(e).__name__}: {e})") from None
    if isinstance(obj, type) and issubclass(obj, Engine):
        obj = obj()
    if not isinstance(obj, Engine):
        raise ConfigError(f"engine {name!r}: {ref!r} is not a quantkit.engines.base.Engine")
    if obj.name != name:
        raise ConfigError(f"engine registered as {name!r} calls itself {obj.name!r}")
    return obj


def names() -> list[str]:
    """Registered engine names, built-ins first, in registration order."""
    _read_entry_points()
    return list(_refs)


def get(name: str) -> Engine:
    _read_entry_points()
    if name not in _refs:
        raise ConfigError(f"unknown engine {name!r}", hint=f"choose one of: {', '.join(_refs)}")
    if name not in _loaded:
        _loaded[name] = _instantiate(name, _refs[name])
    return _loaded[name]


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
