"""The raw tree: plain dicts and lists that remember where each key and value came from."""

from __future__ import annotations

from typing import Any

from specc.errors import Location


class LMap(dict[str, Any]):
    """A mapping from YAML with the location of itself, each key and each value."""

    loc: Location | None
    key_locs: dict[str, Location]
    val_locs: dict[str, Location]

    def __init__(self, *args: Any, loc: Location | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loc = loc
        self.key_locs = {}
        self.val_locs = {}

    def value_loc(self, key: str) -> Location | None:
        return self.val_locs.get(key) or self.key_locs.get(key) or self.loc


class LList(list[Any]):
    """A sequence from YAML with the location of itself and of each item."""

    loc: Location | None
    item_locs: list[Location | None]

    def __init__(self, *args: Any, loc: Location | None = None) -> None:
        super().__init__(*args)
        self.loc = loc
        self.item_locs = []

    def value_loc(self, index: int) -> Location | None:
        if 0 <= index < len(self.item_locs) and self.item_locs[index] is not None:
            return self.item_locs[index]
        return self.loc


def loc_of(tree: Any, path: tuple[Any, ...] = ()) -> Location | None:
    """Best location for ``path`` below ``tree``: the deepest node on the path that has one."""
    best: Location | None = getattr(tree, "loc", None)
    node = tree
    for key in path:
        if isinstance(node, LMap) and isinstance(key, str):
            if key in node:
                best = node.value_loc(key) or best
                node = node[key]
                continue
            return best
        if isinstance(node, LList) and isinstance(key, int):
            if 0 <= key < len(node):
                best = node.value_loc(key) or best
                node = node[key]
                continue
            return best
        return best
    return best


def to_plain(value: Any) -> Any:
    """Strip location info (for JSON output and hashing)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value
