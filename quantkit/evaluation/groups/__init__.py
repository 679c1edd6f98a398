"""Measurement groups, registered lazily by name as "module:Class" (lm-eval's registry pattern):
a group's module is imported only when compare asks for it, and a new group is one file plus one
`register` call, from quantkit or from outside it (a plugin, a test).

    from quantkit.evaluation import groups
    groups.register("energy", "mypkg.energy:EnergyGroup")
"""

from __future__ import annotations

import importlib

from quantkit.errors import ConfigError
from quantkit.evaluation.groups.base import NEEDS, Group, Needs

__all__ = ["Group", "Needs", "NEEDS", "BUILTIN", "register", "unregister", "names", "get"]

_HERE = __name__
BUILTIN: dict[str, str] = {
    "serving": f"{_HERE}.serving:ServingGroup",
    "fidelity": f"{_HERE}.fidelity:FidelityGroup",
    "probes": f"{_HERE}.probes:ProbesGroup",
    "tasks": f"{_HERE}.tasks:TasksGroup",
    "sweep": f"{_HERE}.sweep:SweepGroup",
    "speed": f"{_HERE}.speed:SpeedGroup",
    "memory": f"{_HERE}.memory:MemoryGroup",
}
_specs: dict[str, str | type[Group]] = dict(BUILTIN)
_loaded: dict[str, Group] = {}


def register(name: str, spec: str | type[Group], *, replace: bool = False) -> None:
    """Register a group class, or its "module:Class" path (imported on first use)."""
    if not name or not isinstance(name, str):
        raise ConfigError(f"a measurement group needs a name, not {name!r}")
    if name in _specs and not replace:
        raise ConfigError(f"measurement group {name!r} is already registered ({_describe(_specs[name])})",
                          hint="pass replace=True to replace it")
    if isinstance(spec, str) and spec.count(":") != 1:
        raise ConfigError(f"measurement group {name!r}: {spec!r} is not a 'module:Class' path")
    if not isinstance(spec, str):
        _check(name, spec)
    _specs[name] = spec
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    _specs.pop(name, None)
    _loaded.pop(name, None)


def names() -> list[str]:
    """Registered group names (nothing is imported)."""
    return list(_specs)


def get(name: str) -> Group:
    """The group registered under `name`, imported and made on first use."""
    if name in _loaded:
        return _loaded[name]
    if name not in _specs:
        raise ConfigError(f"unknown measurement group {name!r}", hint=f"registered: {', '.join(_specs)}")
    spec = _specs[name]
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"measurement group {name!r}: cannot load {spec} ({e})") from e
    else:
        cls = spec
    _loaded[name] = _check(name, cls)()
    return _loaded[name]


def _check(name: str, cls: object) -> type[Group]:
    if not (isinstance(cls, type) and issubclass(cls, Group)):
        raise ConfigError(f"measurement group {name!r}: {cls!r} is not a quantkit.evaluation.groups.Group")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(f"measurement group {name!r} ({cls.__name__}) does not implement {', '.join(missing)}",
                          hint="every group declares its conditions (the inputs in its key) and measure(run)")
    if getattr(cls, "name", None) != name:
        raise ConfigError(f"measurement group {cls.__name__} is named {getattr(cls, 'name', None)!r}, "
                          f"registered as {name!r}")
    if cls.needs not in NEEDS:
        raise ConfigError(f"measurement group {name!r} needs {cls.needs!r}; choose one of {', '.join(NEEDS)}")
    return cls


def _describe(spec: str | type[Group]) -> str:
    return spec if isinstance(spec, str) else f"{spec.__module__}:{spec.__qualname__}"
