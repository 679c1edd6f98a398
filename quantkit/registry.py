"""Named things loaded lazily, after lm-evaluation-harness's lm_eval/api/registry.py.

A `Registry` maps each name to a spec: a "module:attr" string, imported the first time the name is
asked for (so listing the names imports nothing), or the object itself. The engines, builders,
measurement groups and leaderboard exporters are thin users of it; each keeps its own error types
and explains in its own module how to add one.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")
ErrorFactory = Callable[[str, "str | None"], Exception]  # (message, hint) -> the exception to raise


def folded(exc_type: Callable[[str], Exception]) -> ErrorFactory:
    """An ErrorFactory for an exception type without a hint (KeyError, ValueError): the hint joins the message."""

    def error(message: str, hint: str | None = None) -> Exception:
        return exc_type(f"{message}; {hint}" if hint else message)

    return error


def split_spec(spec: str) -> tuple[str, str]:
    """("module", "attr") from "module:attr"; ValueError for anything else."""
    module, _, attr = spec.partition(":")
    if not (module and attr) or ":" in attr:
        raise ValueError(f"{spec!r} is not a \"module:attr\" path")
    return module, attr


def import_attr(spec: str) -> Any:
    """What "module:attr" names (attr may be dotted), imported now; an ImportError as for `from module import attr`."""
    module, attr = split_spec(spec)
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"cannot import name {attr!r} from {module!r}", name=module) from None
    return obj


def describe(spec: object) -> str:
    """A spec for messages: a string as it is, a class as "module:Class", anything else by its repr."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, type):
        return f"{spec.__module__}:{spec.__qualname__}"
    return repr(spec)


_KEY_ERROR = folded(KeyError)
_VALUE_ERROR = folded(ValueError)


class Registry(Generic[T]):
    """Items of one kind by name, each registered as a spec ("module:attr" or the object) and made on first use.

    `kind` names the items in messages ("engine"); `builtin` holds the specs known from the start, in
    order; `make(name, obj)` checks what a spec names and turns it into the item (instantiates a class,
    checks a contract), raising if it cannot (default: the object as it is); `entry_point_group` adds
    the names installed packages declare there (value "module:attr"), read once, on first listing;
    `error(message, hint)` makes the exception for a bad name, an unknown one or a spec that cannot be
    loaded, `duplicate_error(message, hint)` the one for a name taken by another spec.
    """

    def __init__(self, kind: str, builtin: Mapping[str, object] | None = None, *,
                 make: Callable[[str, Any], T] | None = None, entry_point_group: str | None = None,
                 error: ErrorFactory = _KEY_ERROR, duplicate_error: ErrorFactory = _VALUE_ERROR) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._make = make
        self._error = error
        self._duplicate_error = duplicate_error
        self._specs: dict[str, object] = dict(builtin or {})
        self._loaded: dict[str, T] = {}
        self._entry_points_read = entry_point_group is None

    def register(self, name: str, spec: object, *, replace: bool = False) -> None:
        """Register `name` as `spec` (a string is imported on first use). A name taken by another spec is
        refused unless `replace`; registering the same spec again changes nothing."""
        if not name or not isinstance(name, str):
            raise self._error(f"{self.kind} names are non-empty strings, not {name!r}", None)
        if isinstance(spec, str):
            self._check_spec(name, spec)
        if name in self._specs and not replace and self._specs[name] != spec:
            raise self._duplicate_error(f"{self.kind} {name!r} is registered already ({describe(self._specs[name])})",
                                        "pass replace=True to replace the one already registered")
        self._specs[name] = spec
        self._loaded.pop(name, None)

    def unregister(self, name: str) -> None:
        self._specs.pop(name, None)
        self._loaded.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, spec: object) -> Iterator[T]:
        """Register `name` for the duration of a block (tests), yield its item, then restore what was there."""
        had, previous = name in self._specs, self._specs.get(name)
        self.register(name, spec, replace=True)
        try:
            yield self.get(name)
        finally:
            self.unregister(name)
            if had:
                self._specs[name] = previous

    def names(self) -> list[str]:
        """The registered names in registration order, built-ins first; nothing is imported."""
        self._read_entry_points()
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        self._read_entry_points()
        return name in self._specs

    def get(self, name: str) -> T:
        """The item registered as `name`, imported and made on first use."""
        if name not in self._loaded:
            if name not in self:
                raise self._error(f"unknown {self.kind} {name!r}", f"choose one of: {', '.join(self._specs)}")
            self._loaded[name] = self._load(name, self._specs[name])
        return self._loaded[name]

    def _load(self, name: str, spec: object) -> T:
        obj: Any = spec
        if isinstance(spec, str):
            self._check_spec(name, spec)  # entry points are not checked when read
            try:
                obj = import_attr(spec)
            except ImportError as e:
                raise self._error(f"{self.kind} {name!r}: cannot load {spec}: cannot import it ({type(e).__name__}: {e})",
                                  None) from e
        return self._make(name, obj) if self._make else obj

    def _check_spec(self, name: str, spec: str) -> None:
        try:
            split_spec(spec)
        except ValueError as e:
            raise self._error(f"{self.kind} {name!r}: {e}", None) from None

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        for ep in metadata.entry_points(group=self.entry_point_group or ""):
            self._specs.setdefault(ep.name, ep.value)
