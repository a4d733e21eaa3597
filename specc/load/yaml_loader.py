"""Safe YAML loading with limits checked on the event stream before anything is composed.

Scalars are resolved strictly (a YAML 1.2 core subset): only ``true``/``false`` are booleans
(``yes``/``on`` stay strings), ``010`` is not an octal int, and ``1e-3`` is a float. Tags other than
the standard scalar/collection tags, duplicate keys and merge keys are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from specc.errors import Diagnostic, LoadError, Location
from specc.load.tree import LList, LMap


@dataclass(frozen=True)
class Limits:
    """Safety limits applied to every spec file."""

    max_bytes: int = 1 << 20
    max_depth: int = 64
    max_nodes: int = 100_000
    max_aliases: int = 16


LIMITS = Limits()

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _StrictResolver(yaml.resolver.BaseResolver):
    """Implicit scalar types of YAML 1.2's core schema (no yes/no/on/off, no sexagesimal)."""


_StrictResolver.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictResolver.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_StrictResolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_StrictResolver.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _Loader(yaml.SafeLoader):
    """SafeLoader's parser and composer with the strict resolver."""


_Loader.yaml_implicit_resolvers = _StrictResolver.yaml_implicit_resolvers


def _loc(file: str, mark: Any) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def _check_events(text: str, file: str, limits: Limits) -> None:
    """Walk the event stream: depth, expanded node count and alias budget, before composing."""
    depth = 0
    nodes = 0
    aliases = 0
    open_anchors: list[tuple[str | None, int]] = []
    sizes: dict[str, int] = {}
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > limits.max_aliases:
                raise LoadError.one(
                    f"more than {limits.max_aliases} YAML aliases", _loc(file, event.start_mark)
                )
            if any(a == event.anchor for a, _ in open_anchors):
                raise LoadError.one(f"recursive alias *{event.anchor}", _loc(file, event.start_mark))
            nodes += sizes.get(event.anchor or "", 1)
        elif isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            nodes += 1
            if isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    sizes[event.anchor] = 1
            else:
                depth += 1
                if depth > limits.max_depth:
                    raise LoadError.one(
                        f"nesting deeper than {limits.max_depth} levels", _loc(file, event.start_mark)
                    )
                open_anchors.append((event.anchor, nodes))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            anchor, start = open_anchors.pop()
            if anchor:
                sizes[anchor] = nodes - start + 1
        if nodes > limits.max_nodes:
            raise LoadError.one(
                f"more than {limits.max_nodes} YAML nodes (after expanding aliases)",
                _loc(file, event.start_mark),
            )


_CONSTRUCT = yaml.SafeLoader("")


def _scalar(node: ScalarNode, file: str) -> Any:
    tag = node.tag
    if tag == _STR:
        return node.value
    if tag == _BOOL:
        return node.value.lower() == "true"
    if tag == _NULL:
        return None
    if tag == _INT:
        return int(node.value)
    if tag == _FLOAT:
        return _CONSTRUCT.construct_yaml_float(node)
    raise LoadError.one(f"YAML tag {tag!r} is not allowed in a spec (data only)", _loc(file, node.start_mark))


def _construct(node: Node, file: str) -> Any:
    if isinstance(node, ScalarNode):
        return _scalar(node, file)
    if isinstance(node, SequenceNode):
        if node.tag != _SEQ:
            raise LoadError.one(f"YAML tag {node.tag!r} is not allowed", _loc(file, node.start_mark))
        seq = LList(loc=_loc(file, node.start_mark))
        for item in node.value:
            seq.append(_construct(item, file))
            seq.item_locs.append(_loc(file, item.start_mark))
        return seq
    if isinstance(node, MappingNode):
        if node.tag != _MAP:
            raise LoadError.one(f"YAML tag {node.tag!r} is not allowed", _loc(file, node.start_mark))
        mapping = LMap(loc=_loc(file, node.start_mark))
        for key_node, value_node in node.value:
            key_loc = _loc(file, key_node.start_mark)
            if not isinstance(key_node, ScalarNode) or key_node.tag not in (_STR, _INT, _BOOL, _NULL, _FLOAT):
                raise LoadError.one("mapping keys must be plain names", key_loc)
            key = key_node.value
            if key == "<<":
                raise LoadError.one("YAML merge keys (<<) are not supported; use blocks or vars", key_loc)
            if key in mapping:
                first = mapping.key_locs[key]
                raise LoadError.one(f"duplicate key '{key}' (first defined at line {first.line})", key_loc)
            mapping[key] = _construct(value_node, file)
            mapping.key_locs[key] = key_loc
            mapping.val_locs[key] = _loc(file, value_node.start_mark)
        return mapping
    raise LoadError.one("unsupported YAML node", _loc(file, node.start_mark))


def load_text(text: str, file: str = "<string>", limits: Limits = LIMITS) -> Any:
    """Parse YAML text into an :class:`LMap`/:class:`LList` tree. Raises :class:`LoadError`."""
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise LoadError.one(f"file is larger than {limits.max_bytes} bytes", Location(file, 1, 1))
    try:
        _check_events(text, file, limits)
        node = yaml.compose(text, Loader=_Loader)
    except LoadError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _loc(file, mark) if mark else Location(file, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise LoadError([Diagnostic(f"invalid YAML: {problem}", where)]) from None
    except yaml.YAMLError as exc:
        raise LoadError([Diagnostic(f"invalid YAML: {exc}", Location(file, 1, 1))]) from None
    except RecursionError:
        raise LoadError.one("YAML nesting too deep", Location(file, 1, 1)) from None
    if node is None:
        return None
    return _construct(node, file)


def load_yaml_file(path: str | Path, limits: Limits = LIMITS) -> Any:
    """Read and load a YAML file; size is checked before reading it whole."""
    p = Path(path)
    name = str(path)
    try:
        size = p.stat().st_size
        if size > limits.max_bytes:
            raise LoadError.one(
                f"file is larger than {limits.max_bytes} bytes ({size} bytes)", Location(name, 1, 1)
            )
        data = p.read_bytes()
    except FileNotFoundError:
        raise LoadError.one(f"no such file: {name}") from None
    except IsADirectoryError:
        raise LoadError.one(f"is a directory, not a spec file: {name}") from None
    except OSError as exc:
        raise LoadError.one(f"cannot read {name}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError.one(f"not UTF-8 text (byte {exc.start})", Location(name, 1, 1)) from None
    return load_text(text, name, limits)


def parse_scalar(text: str, source: str = "<--set>") -> Any:
    """Parse a ``--set`` value with the same strict rules (flow collections allowed)."""
    value = load_text(text, source) if text.strip() else ""
    return "" if value is None and text.strip() == "" else value
