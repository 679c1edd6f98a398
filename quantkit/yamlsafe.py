"""Read untrusted YAML (recipes, `--set` values) into plain data, or fail with one clear line.

PyYAML's SafeLoader constructs no objects, but it still accepts three things a config file should
not have: duplicate keys (the last one silently wins), alias bombs (a few hundred bytes of nested
anchors that expand to billions of nodes in whatever walks the result), and nesting deep enough to
exhaust Python's recursion limit. No maintained library adds these checks to PyYAML (ruamel.yaml
refuses duplicates but not alias bombs; strictyaml refuses anchors outright but is a different
parser), so the loader below adds them by hand: a bounded read, a duplicate-key check in
`construct_mapping`, and a measure of the composed node graph, with aliases expanded, before
anything is constructed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from quantkit.errors import ConfigError

MAX_BYTES = 64 * 1024  # the shipped recipes are under 1 KiB
MAX_NODES = 10_000  # nodes after expanding aliases; a recipe has about 30
MAX_DEPTH = 40  # nesting after expanding aliases; a recipe has 3


class _Refused(yaml.YAMLError):
    """A document this loader will not construct; the message is already one line."""


def _where(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown position"


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _measure(root: Node) -> None:
    """Refuse a composed document whose alias-expanded size or depth is too large, or that refers
    to itself. Iterative (an explicit stack), because the graph's depth is what is being checked."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    open_: set[int] = set()  # nodes whose subtree is being walked: the ancestors of the current one
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            kids = [done[id(k)] for k in _children(node)]
            size = 1 + sum(s for s, _ in kids)
            height = 1 + max((h for _, h in kids), default=0)
            if size > MAX_NODES:
                raise _Refused(f"the document expands to more than {MAX_NODES} nodes (anchors and aliases "
                               f"multiply it); refused near {_where(node.start_mark)}")
            if height > MAX_DEPTH:
                raise _Refused(f"the document nests deeper than {MAX_DEPTH} levels; refused near "
                               f"{_where(node.start_mark)}")
            done[key] = (size, height)
            continue
        if key in done:
            continue
        if key in open_:
            raise _Refused(f"an alias refers to a node that contains it (recursive anchor) at {_where(node.start_mark)}")
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in done)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and documents too large once aliases are expanded."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # The composer recurses once per level; stop before Python's recursion limit does.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"the document nests deeper than {MAX_DEPTH} levels at "
                               f"{_where(self.peek_event().start_mark)}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _measure(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then an explicit key is an override, not a duplicate
                key = self.construct_object(key_node, deep=deep)
                try:
                    seen = first.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor reports it
                if seen is not None:
                    raise _Refused(f"duplicate key {key!r} at {_where(key_node.start_mark)} "
                                   f"(first at {_where(seen)}); each key may appear once")
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _guarded(construct: Callable[[Any, Node], Any]) -> Callable[[Any, Node], Any]:
    """SafeConstructor's scalar constructors trust their input's shape: an explicitly tagged value
    that does not fit (`!!int ''`, `!!float ''`, `!!bool maybe`, `!!timestamp soon`, `2024-13-45`, an
    integer past Python's digit limit) raises IndexError, KeyError, AttributeError or ValueError.
    Each becomes a one-line refusal at the value's position."""

    def construct_checked(loader: Any, node: Node) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, IndexError, KeyError, AttributeError, OverflowError) as e:
            shown = repr(node.value) if len(repr(node.value)) <= 40 else repr(node.value)[:37] + "..."
            raise _Refused(f"{node.tag.rsplit(':', 1)[-1]} value {shown} at {_where(node.start_mark)} "
                           f"cannot be read ({type(e).__name__}: {str(e)[:80]})") from None

    return construct_checked


for _tag, _construct in ((t, yaml.SafeLoader.yaml_constructors[f"tag:yaml.org,2002:{t}"])
                         for t in ("int", "float", "bool", "timestamp")):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _guarded(_construct))


def _one_line(e: yaml.YAMLError) -> str:
    if isinstance(e, _Refused):
        return str(e)
    if isinstance(e, yaml.MarkedYAMLError):
        what = "; ".join(p for p in (e.context, e.problem) if p) or "malformed YAML"
        return f"{what} at {_where(e.problem_mark or e.context_mark)}"
    return " ".join(str(e).split())  # e.g. ReaderError: a control character that YAML does not allow


def loads(text: str, origin: str) -> Any:
    """Parse one YAML document from `text`; `origin` names it in errors (a file, `--set key`)."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{origin}: {len(text)} characters is too large for a recipe (at most {MAX_BYTES})")
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML: {_one_line(e)}") from None


def read_text(path: Path) -> str:
    """The file's text, refusing directories, unreadable, oversized and non-UTF-8 files clearly."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a recipe file", hint=f"name a .yaml file, e.g. `ls {path}`")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # bounded: a device file or a huge file is not read whole
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES // 1024} KiB, too large for a recipe",
                          hint="a recipe is a short YAML file; see recipes/README.md")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8)",
                          hint="a recipe is a UTF-8 YAML file; see recipes/README.md") from None


def load_file(path: Path) -> Any:
    return loads(read_text(path), str(path))
