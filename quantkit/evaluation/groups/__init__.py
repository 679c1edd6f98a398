"""Measurement groups, registered lazily by name as "module:Class" (lm-eval's registry pattern):
a group's module is imported only when compare asks for it, and a new group is one file plus one
`register` call, from quantkit or from outside it (a plugin, a test).

    from quantkit.evaluation import groups
    groups.register("energy", "mypkg.energy:EnergyGroup")

The mechanics are quantkit.registry's; here a group class is checked (`_check`) when registered, a
"module:Class" path when first used, and every error is a ConfigError.
"""

from __future__ import annotations

from quantkit.errors import ConfigError
from quantkit.evaluation.groups.base import NEEDS, Group, Needs
from quantkit.registry import Registry

__all__ = ["Group", "Needs", "NEEDS", "BUILTIN", "register", "unregister", "names", "get"]

_HERE = __name__
BUILTIN: dict[str, str] = {
    "serving": f"{_HERE}.serving:ServingGroup",
    "scaling": f"{_HERE}.scaling:ScalingGroup",
    "fidelity": f"{_HERE}.fidelity:FidelityGroup",
    "probes": f"{_HERE}.probes:ProbesGroup",
    "tasks": f"{_HERE}.tasks:TasksGroup",
    "sweep": f"{_HERE}.sweep:SweepGroup",
    "speed": f"{_HERE}.speed:SpeedGroup",
    "memory": f"{_HERE}.memory:MemoryGroup",
    "build": f"{_HERE}.build:BuildGroup",
}


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


def _make(name: str, cls: object) -> Group:
    return _check(name, cls)()


_groups: Registry[Group] = Registry("measurement group", BUILTIN, make=_make, error=ConfigError,
                                    duplicate_error=ConfigError)


def register(name: str, spec: str | type[Group], *, replace: bool = False) -> None:
    """Register a group class, or its "module:Class" path (imported on first use)."""
    if not isinstance(spec, str):
        _check(name, spec)
    _groups.register(name, spec, replace=replace)


def unregister(name: str) -> None:
    _groups.unregister(name)


def names() -> list[str]:
    """Registered group names (nothing is imported)."""
    return _groups.names()


def get(name: str) -> Group:
    """The group registered under `name`, imported and made on first use."""
    return _groups.get(name)
