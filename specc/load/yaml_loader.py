"""Safe YAML loading in one pass over the parser's event stream, with limits checked as events arrive.

The events come from libyaml's C parser where PyYAML was built with it (``yaml._yaml.CParser``),
else from PyYAML's pure-Python parser; either way the tree is built here, straight from the events,
so nothing is composed before the limits (depth, node count with aliases expanded, alias budget)
are checked, and the text is parsed once. (PyYAML's own loaders compose a node graph and then
construct objects from it; doing both here in a single loop is what keeps this within a small
factor of ``yaml.load(CSafeLoader)`` while recording the line/column of every key and value.)

Scalars are resolved strictly (a YAML 1.2 core subset): only ``true``/``false`` are booleans
(``yes``/``on`` stay strings), ``010`` is not an octal int, ``1e-3`` is a float, and integers must fit
in 64 bits. Tags other than the standard scalar/collection tags, duplicate keys, merge keys and
several documents in one file are errors.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from specc.errors import Diagnostic, LoadError, Location
from specc.load.tree import LList, LMap

_CParser: Any
try:  # libyaml's event parser (PyYAML built with it); the pure-Python one otherwise
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    _CParser = None


@dataclass(frozen=True)
class Limits:
    """Safety limits applied to every spec file."""

    max_bytes: int = 1 << 20
    max_depth: int = 64
    max_nodes: int = 100_000
    max_aliases: int = 16


LIMITS = Limits()
MAX_INT_BITS = 63
"""Integer literals must fit in a signed 64-bit integer (a 5,000-digit literal is an error, not a hang)."""

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_KEY_TAGS = (_STR, _INT, _BOOL, _NULL, _FLOAT)

# Implicit scalar types of YAML 1.2's core schema (no yes/no/on/off, no sexagesimal, no octal),
# keyed by the first character as PyYAML's resolver does.
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")
_RESOLVERS: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
for _tag, _regex, _first in (
    (_BOOL, _BOOL_RE, "tTfF"),
    (_INT, _INT_RE, "-+0123456789"),
    (_FLOAT, _FLOAT_RE, "-+0123456789."),
    (_NULL, _NULL_RE, "~nN"),
):
    for _c in _first:
        _RESOLVERS.setdefault(_c, []).append((_tag, _regex))
_RESOLVERS[""] = [(_NULL, _NULL_RE)]


def _loc(file: str, mark: Any) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def _resolve(value: str, plain: bool) -> str:
    if not plain:
        return _STR
    for tag, regex in _RESOLVERS.get(value[:1], ()):
        if regex.match(value):
            return tag
    return _STR


def _scalar(tag: str, value: str, file: str, mark: Any) -> Any:
    if tag == _STR:
        return value
    if tag == _INT:
        digits = value.lstrip("+-")
        number = int(value) if len(digits) <= 19 else None
        if number is None or abs(number) >= 1 << MAX_INT_BITS:
            raise LoadError.one(
                f"integer {value[:24]}{'...' if len(value) > 24 else ''} does not fit in 64 bits",
                _loc(file, mark),
            )
        return number
    if tag == _FLOAT:
        low = value.lower()
        if low.endswith(".inf"):
            return float("-inf") if low.startswith("-") else float("inf")
        if low == ".nan":
            return float("nan")
        return float(value)
    if tag == _BOOL:
        return value.lower() == "true"
    if tag == _NULL:
        return None
    raise LoadError.one(f"YAML tag {tag!r} is not allowed in a spec (data only)", _loc(file, mark))


def _copy(value: Any) -> Any:
    """A deep copy of an anchored value (an alias is expanded, as PyYAML's loaders do), locations kept."""
    if isinstance(value, LMap):
        out = LMap(loc=value.loc)
        for k, v in value.items():
            out[k] = _copy(v)
        out.key_locs = dict(value.key_locs)
        out.val_locs = dict(value.val_locs)
        return out
    if isinstance(value, LList):
        seq = LList((_copy(v) for v in value), loc=value.loc)
        seq.item_locs = list(value.item_locs)
        return seq
    return value


class _Frame:
    """An open mapping or sequence while its events arrive."""

    __slots__ = ("anchor", "container", "key", "key_loc", "mark", "start")

    def __init__(self, container: LMap | LList, anchor: str | None, start: int, mark: Any) -> None:
        self.container = container
        self.anchor = anchor
        self.mark = mark
        self.start = start  # node count when it opened (for the size of an anchored subtree)
        self.key: str | None = None
        self.key_loc: Location | None = None


def _events(text: str) -> Any:
    """An object with ``get_event()`` over ``text``: libyaml's parser when available."""
    if _CParser is not None:
        return _CParser(text)
    return yaml.SafeLoader(text)  # pragma: no cover - pure-Python parser


def _build(text: str, file: str, limits: Limits) -> Any:
    parser = _events(text)
    stack: list[_Frame] = []
    anchors: dict[str, tuple[Any, int]] = {}
    nodes = aliases = documents = 0
    root: Any = None
    while True:
        event = parser.get_event()
        kind = type(event)
        value: Any
        if kind is yaml.ScalarEvent:
            nodes += 1
            tag = event.tag
            if tag is None or tag == "!":
                tag = _resolve(event.value, event.implicit[0])
            if stack and isinstance(stack[-1].container, LMap) and stack[-1].key is None:
                _set_key(stack[-1], event, tag, file)
                _count(nodes, limits, file, event)
                if event.anchor:
                    _new_anchor(anchors, event.anchor, event.value, 1, file, event.start_mark)
                continue
            value = _scalar(tag, event.value, file, event.start_mark)
            if event.anchor:
                _new_anchor(anchors, event.anchor, value, 1, file, event.start_mark)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            nodes += 1
            _count(nodes, limits, file, event)
            if stack and isinstance(stack[-1].container, LMap) and stack[-1].key is None:
                raise LoadError.one("mapping keys must be plain names", _loc(file, event.start_mark))
            if len(stack) >= limits.max_depth:
                raise LoadError.one(
                    f"nesting deeper than {limits.max_depth} levels", _loc(file, event.start_mark)
                )
            is_map = kind is yaml.MappingStartEvent
            tag = event.tag
            if tag is not None and tag != "!" and tag != (_MAP if is_map else _SEQ):
                raise LoadError.one(f"YAML tag {tag!r} is not allowed", _loc(file, event.start_mark))
            loc = _loc(file, event.start_mark)
            stack.append(
                _Frame(LMap(loc=loc) if is_map else LList(loc=loc), event.anchor, nodes, event.start_mark)
            )
            continue
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            frame = stack.pop()
            value = frame.container
            if frame.anchor:
                _new_anchor(anchors, frame.anchor, value, nodes - frame.start + 1, file, frame.mark)
        elif kind is yaml.AliasEvent:
            aliases += 1
            where = _loc(file, event.start_mark)
            if aliases > limits.max_aliases:
                raise LoadError.one(f"more than {limits.max_aliases} YAML aliases", where)
            if any(f.anchor == event.anchor for f in stack):
                raise LoadError.one(f"recursive alias *{event.anchor}", where)
            if event.anchor not in anchors:
                raise LoadError.one(f"invalid YAML: found undefined alias *{event.anchor}", where)
            if stack and isinstance(stack[-1].container, LMap) and stack[-1].key is None:
                raise LoadError.one("mapping keys must be plain names", where)
            anchored, size = anchors[event.anchor]
            nodes += size
            _count(nodes, limits, file, event)
            value = _copy(anchored)
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise LoadError.one(
                    "invalid YAML: expected a single document in the stream", _loc(file, event.start_mark)
                )
            continue
        elif kind is yaml.StreamEndEvent:
            return root
        else:  # stream start, document end
            continue
        _count(nodes, limits, file, event)
        if not stack:
            root = value
            continue
        _attach(stack[-1], value, file, event)


def _count(nodes: int, limits: Limits, file: str, event: Any) -> None:
    if nodes > limits.max_nodes:
        raise LoadError.one(
            f"more than {limits.max_nodes} YAML nodes (after expanding aliases)", _loc(file, event.start_mark)
        )


def _new_anchor(
    anchors: dict[str, tuple[Any, int]], name: str, value: Any, size: int, file: str, mark: Any
) -> None:
    if name in anchors:
        raise LoadError.one(f"invalid YAML: anchor &{name} is defined twice", _loc(file, mark))
    anchors[name] = (value, size)


def _set_key(frame: _Frame, event: Any, tag: str, file: str) -> None:
    key_loc = _loc(file, event.start_mark)
    if tag not in _KEY_TAGS:
        raise LoadError.one("mapping keys must be plain names", key_loc)
    key = event.value
    if key == "<<":
        raise LoadError.one("YAML merge keys (<<) are not supported; use blocks or vars", key_loc)
    mapping = frame.container
    assert isinstance(mapping, LMap)
    if key in mapping:
        first = mapping.key_locs[key]
        raise LoadError.one(f"duplicate key '{key}' (first defined at line {first.line})", key_loc)
    frame.key = key
    frame.key_loc = key_loc


def _attach(frame: _Frame, value: Any, file: str, event: Any) -> None:
    container = frame.container
    where = _loc(file, event.start_mark)
    if isinstance(container, LList):
        container.append(value)
        container.item_locs.append(getattr(value, "loc", None) or where)
        return
    key = frame.key
    assert key is not None and frame.key_loc is not None
    container[key] = value
    container.key_locs[key] = frame.key_loc
    container.val_locs[key] = getattr(value, "loc", None) or where
    frame.key = None


def load_text(text: str, file: str = "<string>", limits: Limits = LIMITS) -> Any:
    """Parse YAML text into an :class:`LMap`/:class:`LList` tree. Raises :class:`LoadError`."""
    if len(text) > limits.max_bytes or len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise LoadError.one(f"file is larger than {limits.max_bytes} bytes", Location(file, 1, 1))
    try:
        return _build(text, file, limits)
    except LoadError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _loc(file, mark) if mark else Location(file, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise LoadError([Diagnostic(f"invalid YAML: {problem}", where)]) from None
    except yaml.YAMLError as exc:
        raise LoadError([Diagnostic(f"invalid YAML: {exc}", Location(file, 1, 1))]) from None
    except (ValueError, UnicodeError) as exc:  # e.g. a float libyaml accepts but Python does not
        raise LoadError([Diagnostic(f"invalid YAML: {exc}", Location(file, 1, 1))]) from None


def read_capped(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """Read a regular file of at most ``max_bytes``, enforcing the cap while reading.

    The file is opened non-blocking and checked with ``fstat`` on the open descriptor, so a FIFO,
    a device (``/dev/zero``, ``/dev/urandom``) or a directory is refused at once instead of
    blocking or filling memory; a regular file that grows while read is cut at the cap.

    Raises:
        LoadError: not found, not a regular file, unreadable or larger than ``max_bytes``.
    """
    name = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise LoadError.one(f"no such file: {name}") from None
    except IsADirectoryError:
        raise LoadError.one(f"is a directory, not a {what}: {name}") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LoadError.one(f"cannot read {name}: {reason}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise LoadError.one(f"is a directory, not a {what}: {name}")
        if not stat.S_ISREG(mode):
            raise LoadError.one(f"not a regular file (a device, FIFO or socket): {name}")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise LoadError.one(f"cannot read {name}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise LoadError.one(f"file is larger than {max_bytes} bytes", Location(name, 1, 1))
    return b"".join(chunks)


def decode(data: bytes, name: str) -> str:
    """UTF-8 text of a spec file (a located error otherwise)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError.one(f"not UTF-8 text (byte {exc.start})", Location(name, 1, 1)) from None


def load_yaml_file(path: str | Path, limits: Limits = LIMITS) -> Any:
    """Read (at most ``limits.max_bytes``, regular files only) and load a YAML file."""
    name = str(path)
    return load_text(decode(read_capped(path, limits.max_bytes, "spec file"), name), name, limits)


def parse_scalar(text: str, source: str = "<--set>") -> Any:
    """Parse a ``--set`` value with the same strict rules (flow collections allowed)."""
    value = load_text(text, source) if text.strip() else ""
    return "" if value is None and text.strip() == "" else value
