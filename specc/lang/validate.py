"""Turn pydantic validation errors into located diagnostics (``file:line:col: path: message``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from specc.errors import Diagnostic, Location, did_you_mean
from specc.load.tree import LList, LMap, loc_of, to_plain

M = TypeVar("M", bound=BaseModel)


def format_path(base: str, parts: Iterable[Any]) -> str:
    out = base
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _data_prefix(data: Any, loc: tuple[Any, ...]) -> int:
    """How many leading entries of a pydantic error ``loc`` index into the actual data."""
    n = 0
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        n += 1
    return n


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
    return names


def _short(value: Any) -> str:
    text = repr(to_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


def validate(
    model: type[M],
    tree: Any,
    base_path: str,
    fallback: Location | None = None,
    *,
    context: dict[str, Any] | None = None,
    locs: Any = None,
) -> tuple[M | None, list[Diagnostic]]:
    """Validate ``tree`` (an :class:`LMap` from the loader, or plain data) against ``model``.

    Returns the model or every error found, each located at the YAML node that is wrong (``locs``:
    the location table when ``tree`` is plain data, e.g. arguments after substitution). Union
    branches reported separately by pydantic are merged into one message per location.
    """
    plain = to_plain(tree)
    try:
        return model.model_validate(plain, context=context), []
    except ValidationError as exc:
        errors = [dict(e) for e in exc.errors(include_url=False)]
    return None, diagnostics(model, tree if locs is None else locs, plain, base_path, errors, fallback)


def diagnostics(
    model: type[BaseModel] | None,
    tree: Any,
    plain: Any,
    base_path: str,
    errors: list[dict[str, Any]],
    fallback: Location | None = None,
    kind: str = "",
) -> list[Diagnostic]:
    """Located diagnostics for pydantic errors (and :func:`specc.lang.items.problem` ones) about
    ``plain``, whose locations are in ``tree``. ``kind`` names a structural form in messages."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    diags = []
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "specc":
            where = (_key_loc(tree, loc) if err.get("at_key") else None) or loc_of(tree, loc) or fallback
            diags.append(Diagnostic(err["msg"], where, format_path(base_path, err.get("path", loc))))
            continue
        if err["type"] == "missing":
            key = loc[: _data_prefix(plain, loc[:-1])] + (("__missing__", loc[-1]),) if loc else loc
        else:
            key = loc[: _data_prefix(plain, loc)]
        groups[key].append(dict(err))
    for key, errs in groups.items():
        data_loc = tuple(k for k in key if not isinstance(k, tuple))
        where = loc_of(tree, data_loc) or fallback
        if isinstance(tree, (LMap, LList)) and errs[0]["type"] == "extra_forbidden":
            where = _key_loc(tree, data_loc) or where
        path = format_path(base_path, [k[1] if isinstance(k, tuple) else k for k in key])
        owner = f" in a {kind} item" if kind and len(data_loc) <= 1 else ""
        diags.append(Diagnostic(_message(model, plain, data_loc, errs, owner), where, path))
    return diags


def _key_loc(tree: Any, loc: tuple[Any, ...]) -> Location | None:
    node = tree
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    if isinstance(node, LMap) and loc and loc[-1] in node.key_locs:
        return node.key_locs[loc[-1]]
    return None


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested model class that owns the last entry of ``loc`` (best effort, for hints)."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str):
            continue
        info = current.model_fields.get(part)
        ann = getattr(info, "annotation", None)
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return current


_TAGS = {
    "constrained-int": "a positive int",
    "list[constrained-int]": "a list of positive ints",
    "int": "an int",
    "float": "a number",
    "str": "a string",
    "bool": "true/false",
    "list[int]": "a list of ints",
    "list[str]": "a list of names",
    "dict[str,str]": "a mapping of names",
}


def _message(
    model: type[BaseModel] | None,
    plain: Any,
    data_loc: tuple[Any, ...],
    errs: list[dict[str, Any]],
    where: str = "",
) -> str:
    first = errs[0]
    if first["type"] == "extra_forbidden":
        key = str(data_loc[-1]) if data_loc else "?"
        owner = _model_at(model, data_loc)
        hint = did_you_mean(key, _field_names(owner)) if owner else ""
        return f"unknown key '{key}'{where}{hint}"
    if first["type"] == "missing":
        return f"missing required field '{first['loc'][-1]}'{where}"
    if len(errs) == 1 or all(e["msg"] == first["msg"] for e in errs):
        msg = first["msg"]
        ctx_error = (first.get("ctx") or {}).get("error")
        if first["type"] == "value_error" and ctx_error is not None:
            msg = str(ctx_error)
        return (
            f"{msg[0].lower()}{msg[1:]}, got {_short(first.get('input'))}"
            if first["type"] != "value_error"
            else msg
        )
    expected = []
    for e in errs:
        tail = tuple(e["loc"])[len(data_loc) :]
        expected.append(str(tail[0]) if tail else e["msg"])
    unique = list(dict.fromkeys(_TAGS.get(t, t) for t in expected))
    return f"invalid value {_short(first.get('input'))}: expected {' or '.join(unique)}"
