"""``--set key.path=value`` overrides applied to the raw tree before parsing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from specc.errors import Diagnostic, LoadError, Location
from specc.load.tree import LList, LMap
from specc.load.yaml_loader import parse_scalar


def _split(item: str, index: int) -> tuple[list[str], str, Location]:
    where = Location("<--set>", index + 1, 1)
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise LoadError([Diagnostic(f"--set expects key=value, got {item!r}", where)])
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise LoadError([Diagnostic(f"--set key {key!r} has an empty part", where)])
    return parts, value, where


def _with_loc(value: Any, where: Location) -> Any:
    """Give a parsed --set value (and everything in it) the --set location."""
    if isinstance(value, LMap):
        value.loc = where
        for k in value:
            value.key_locs[k] = value.val_locs[k] = where
            _with_loc(value[k], where)
    elif isinstance(value, LList):
        value.loc = where
        value.item_locs = [where] * len(value)
        for v in value:
            _with_loc(v, where)
    return value


def apply_overrides(tree: Any, sets: Sequence[str]) -> Any:
    """Apply ``key=value`` strings in order. A first key that is a variable name means ``vars.KEY``.

    Intermediate mappings are created when missing; list items are addressed by index.
    Unknown keys are left for the parser to reject with a "did you mean" hint.
    """
    if not sets:
        return tree
    if not isinstance(tree, LMap):
        raise LoadError(
            [Diagnostic("--set needs a spec whose top level is a mapping", Location("<--set>", 1, 1))]
        )
    for i, item in enumerate(sets):
        parts, raw_value, where = _split(item, i)
        value = _with_loc(parse_scalar(raw_value, f"<--set {parts[0]}>"), where)
        variables = tree.get("vars")
        if parts[0] not in tree and isinstance(variables, LMap) and parts[0] in variables:
            parts = ["vars", *parts]
        node: Any = tree
        for depth, part in enumerate(parts[:-1]):
            node = _step(node, part, parts[: depth + 1], where)
        _assign(node, parts[-1], value, parts, where)
    return tree


def _step(node: Any, part: str, done: list[str], where: Location) -> Any:
    if isinstance(node, LList):
        return node[_index(node, part, done, where)]
    if isinstance(node, LMap):
        if node.get(part) is None:
            node[part] = LMap(loc=where)
            node.key_locs[part] = node.val_locs[part] = where
        return node[part]
    raise LoadError([Diagnostic(f"--set: {'.'.join(done[:-1])} is a value, not a mapping or list", where)])


def _index(node: LList, part: str, done: list[str], where: Location) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise LoadError([Diagnostic(f"--set: {'.'.join(done)}: a list needs an index", where)]) from None
    if not -len(node) <= idx < len(node):
        raise LoadError(
            [Diagnostic(f"--set: {'.'.join(done)}: index out of range (list has {len(node)})", where)]
        )
    return idx % len(node)


def _assign(node: Any, part: str, value: Any, parts: list[str], where: Location) -> None:
    if isinstance(node, LList):
        idx = _index(node, part, parts, where)
        node[idx] = value
        node.item_locs[idx] = where
    elif isinstance(node, LMap):
        node[part] = value
        node.key_locs[part] = node.val_locs[part] = where
    else:
        raise LoadError([Diagnostic(f"--set: {'.'.join(parts[:-1])} is a value, not a mapping", where)])
