"""quantkit.registry.Registry, the mechanics under the engine, builder, measurement group and exporter
registries: lazy "module:attr" specs, refused duplicates, errors that name the kind, the name and the
known names, and entry points read once."""

from __future__ import annotations

import sys
import uuid
from importlib import metadata

import pytest

from quantkit import registry as registry_module
from quantkit.errors import ConfigError
from quantkit.registry import Registry, folded, import_attr


class Widget:
    def __init__(self, name: str = "") -> None:
        self.name = name


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """The name of a module on sys.path that nothing has imported yet."""
    name = f"qk_lazy_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("class Thing:\n    class Inner:\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _made(name: str, obj: object) -> Widget:
    if not isinstance(obj, type):
        raise ConfigError(f"widget {name!r}: {obj!r} is not a class")
    return Widget(name)


def test_a_module_attr_spec_is_imported_on_first_get_only(lazy_module):
    reg: Registry[Widget] = Registry("widget", {"thing": f"{lazy_module}:Thing"}, make=_made)
    reg.register("inner", f"{lazy_module}:Thing.Inner")
    assert reg.names() == ["thing", "inner"] and "thing" in reg
    assert lazy_module not in sys.modules  # listing and `in` import nothing
    thing = reg.get("thing")
    assert lazy_module in sys.modules and thing.name == "thing"
    assert reg.get("thing") is thing  # made once
    assert reg.get("inner").name == "inner"  # a dotted attribute


def test_a_taken_name_is_refused_unless_replace():
    reg: Registry[object] = Registry("widget", {"a": "mod:A"})
    reg.register("a", "mod:A")  # the same spec again changes nothing
    with pytest.raises(ValueError, match=r"widget 'a' is registered already \(mod:A\).*replace=True"):
        reg.register("a", Widget)
    first = Widget("first")
    reg.register("a", first, replace=True)
    assert reg.get("a") is first
    second = Widget("second")
    reg.register("a", second, replace=True)
    assert reg.get("a") is second  # what was made for the old spec is dropped
    reg.unregister("a")
    assert reg.names() == []


def test_the_error_types_are_the_registrys_own():
    reg: Registry[object] = Registry("widget", {"a": Widget}, error=ConfigError, duplicate_error=ConfigError)
    with pytest.raises(ConfigError, match="already registered") as e:
        reg.register("a", "mod:Other")
    assert e.value.hint == "pass replace=True to replace the one already registered"
    with pytest.raises(ConfigError, match="widget names are non-empty strings"):
        reg.register("", Widget)


def test_an_unknown_name_lists_the_known_names():
    reg: Registry[object] = Registry("widget", {"b": "mod:B", "a": "mod:A"})
    with pytest.raises(KeyError, match="unknown widget 'nope'; choose one of: b, a"):
        reg.get("nope")
    hinted: Registry[object] = Registry("widget", {"b": "mod:B"}, error=ConfigError)
    with pytest.raises(ConfigError, match="unknown widget 'nope'") as e:
        hinted.get("nope")
    assert e.value.hint == "choose one of: b"


def test_a_bad_spec_names_the_kind_and_the_name(lazy_module):
    reg: Registry[Widget] = Registry("widget", make=_made, error=ConfigError)
    for spec in ("no_colon", ":Thing", "mod:", "a:b:c"):
        with pytest.raises(ConfigError, match=f"widget 'w': '{spec}' is not a \"module:attr\" path"):
            reg.register("w", spec)
    assert "w" not in reg
    reg.register("ghost", "no_such_module_qk:Ghost")
    with pytest.raises(ConfigError, match="widget 'ghost': cannot load no_such_module_qk:Ghost: cannot import it "
                                          r"\(ModuleNotFoundError: No module named 'no_such_module_qk'\)"):
        reg.get("ghost")
    reg.register("missing", f"{lazy_module}:Nothing")
    with pytest.raises(ConfigError, match=f"widget 'missing': cannot load {lazy_module}:Nothing: .*cannot import name"):
        reg.get("missing")
    reg.register("instance", Widget())  # not a class: `make` refuses it when first used
    with pytest.raises(ConfigError, match="widget 'instance'.*is not a class"):
        reg.get("instance")
    assert "ghost" in reg and "instance" in reg  # a failed get leaves the registration as it was


def test_entry_points_are_read_once_and_never_override(monkeypatch):
    reads = []

    def entry_points(group: str) -> list[metadata.EntryPoint]:
        reads.append(group)
        return [metadata.EntryPoint("plugin", "plugin_mod:Plugin", group),
                metadata.EntryPoint("taken", "plugin_mod:Taken", group),
                metadata.EntryPoint("bad", "plugin_mod", group)]

    monkeypatch.setattr(registry_module.metadata, "entry_points", entry_points)
    reg: Registry[object] = Registry("widget", {"builtin": Widget}, entry_point_group="qk.widgets", error=ConfigError)
    reg.register("taken", Widget)  # registered before the entry points are read: kept
    assert reads == []
    assert reg.names() == ["builtin", "taken", "plugin", "bad"]
    assert reg.names() == ["builtin", "taken", "plugin", "bad"] and "plugin" in reg
    assert isinstance(reg.get("taken"), type)
    with pytest.raises(ConfigError, match="widget 'bad': 'plugin_mod' is not a \"module:attr\" path"):
        reg.get("bad")  # an entry point is checked when used
    assert reads == ["qk.widgets"]
    assert Registry("widget").names() == [] and reads == ["qk.widgets"]  # no group, nothing read


def test_registered_restores_what_was_there():
    reg: Registry[Widget] = Registry("widget", {"a": Widget}, make=lambda name, cls: cls(name))
    with reg.registered("a", Widget) as a, reg.registered("b", Widget) as b:
        assert (a.name, b.name) == ("a", "b") and reg.names() == ["a", "b"]
    assert reg.names() == ["a"]
    with pytest.raises(KeyError):
        reg.get("b")


def test_import_attr_and_folded():
    assert import_attr("quantkit.registry:Registry") is Registry
    with pytest.raises(ImportError, match="cannot import name 'Nope' from 'quantkit.registry'"):
        import_attr("quantkit.registry:Nope")
    with pytest.raises(ValueError, match="is not a \"module:attr\" path"):
        import_attr("quantkit.registry")
    assert str(folded(ValueError)("message", "hint")) == "message; hint"
    assert str(folded(ValueError)("message", None)) == "message"
