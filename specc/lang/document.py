"""Load a spec file with its includes, scale and ``--set`` overrides into a validated document.

Includes are confined: a relative path must resolve (symbolic links followed) inside the spec's own
folder tree, inside a folder given with ``--include-root`` (:func:`include_roots`), or inside the
bundled library (``std:NAME``); absolute paths, ``../`` escapes, links leading out, devices and
FIFOs are refused before anything is read, so an error can never echo another file's content.
Each file is loaded once (a diamond of includes is fine), at most :data:`MAX_INCLUDE_DEPTH` deep,
:data:`MAX_INCLUDE_FILES` files and :data:`MAX_INCLUDE_BYTES` bytes per document.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specc.errors import Diagnostic, LoadError, Location, ParseError, UsageError, did_you_mean
from specc.lang.items import AnyItem, BlockSignature, Invalid, children
from specc.lang.syntax import BlockDef, LibraryFile, Spec
from specc.lang.validate import diagnostics, validate
from specc.load import LIMITS, LList, LMap, apply_overrides, load_text
from specc.load.tree import to_plain
from specc.load.yaml_loader import decode, read_capped

STDLIB = Path(__file__).resolve().parent.parent / "stdlib"
MAX_INCLUDE_DEPTH = 8
MAX_INCLUDE_FILES = 64
MAX_INCLUDE_BYTES = 8 << 20

_ROOTS: ContextVar[tuple[Path, ...]] = ContextVar("specc_include_roots", default=())


def _folders(folders: Iterable[str | Path]) -> tuple[Path, ...]:
    roots = []
    for folder in folders:
        path = Path(folder)
        if "\x00" in str(folder) or not path.is_dir():
            raise UsageError(f"--include-root {folder}: not a folder")
        roots.append(path.resolve())
    return tuple(roots)


@contextlib.contextmanager
def include_roots(folders: Iterable[str | Path]) -> Iterator[tuple[Path, ...]]:
    """Allow includes from these folders (and below) for specs loaded inside the ``with`` block,
    besides each spec's own folder and the bundled library."""
    roots = _folders(folders)
    token = _ROOTS.set((*_ROOTS.get(), *roots))
    try:
        yield roots
    finally:
        _ROOTS.reset(token)


def set_include_roots(folders: Iterable[str | Path] | None) -> None:
    """The CLI's ``--include-root DIR``: allow these folders for the rest of the command (the CLI
    runs each command in its own context, so nothing carries over to the next one)."""
    _ROOTS.set((*_ROOTS.get(), *_folders(folders or ())))


@dataclass
class Block:
    """A block definition with the raw tree it came from (its location table)."""

    name: str
    definition: BlockDef
    raw: LMap
    source: str  # "blocks.basic" or "std:resnet: blocks.basic"


@dataclass
class SpecDocument:
    """The result of load + parse: the validated spec, its raw tree (locations only) and every block
    it can use. ``problems`` are errors in layer items: lowering skips those items and reports the
    problems together with its own, so one bad item does not hide the errors of the others."""

    spec: Spec
    raw: LMap
    path: str
    blocks: dict[str, Block] = field(default_factory=dict)
    sha256: str = ""
    scale: str | None = None
    overrides: tuple[str, ...] = ()
    problems: list[Diagnostic] = field(default_factory=list)
    var_labels: dict[str, str] = field(default_factory=dict)
    """Where each variable's value was written: ``vars.width``, ``scales.tiny.width``, ``--set width=8``."""


@dataclass
class _Library:
    raw: LMap
    shown: str


@dataclass
class _Includes:
    """The include walk of one document: confinement roots, budgets, what is loaded."""

    roots: tuple[Path, ...]
    libraries: dict[Path, _Library] = field(default_factory=dict)
    order: list[Path] = field(default_factory=list)
    diags: list[Diagnostic] = field(default_factory=list)
    bytes_read: int = 0
    over: bool = False  # the file budget is spent: stop walking


def _apply_scale(raw: LMap, scale: str | None) -> None:
    if scale is None:
        return
    scales = raw.get("scales")
    if not isinstance(scales, dict) or scale not in scales:
        names = list(scales) if isinstance(scales, dict) else []
        hint = did_you_mean(scale, names) or (
            f" (this spec has: {', '.join(names)})" if names else " (none defined)"
        )
        raise ParseError.one(f"unknown scale '{scale}'{hint}", getattr(raw, "loc", None), "--scale")
    chosen = scales[scale]
    if not isinstance(chosen, LMap):
        return  # validation reports it
    variables = raw.get("vars")
    if not isinstance(variables, LMap):
        variables = LMap(loc=chosen.loc)
        raw["vars"] = variables
    for k, v in chosen.items():
        variables[k] = v
        variables.key_locs[k] = chosen.key_locs[k]
        variables.val_locs[k] = chosen.val_locs[k]


def _var_labels(raw: LMap, scale: str | None, sets: Sequence[str]) -> dict[str, str]:
    variables = raw.get("vars")
    labels = {k: f"vars.{k}" for k in variables} if isinstance(variables, dict) else {}
    scales = raw.get("scales")
    chosen = scales.get(scale) if isinstance(scales, dict) and scale else None
    if isinstance(chosen, dict):
        labels.update({k: f"scales.{scale}.{k}" for k in chosen})
    for item in sets:
        parts = item.partition("=")[0].strip().split(".")
        if len(parts) == 2 and parts[0] == "vars":
            labels[parts[1]] = f"--set {item}"
        elif len(parts) == 1 and parts[0] in labels:
            labels[parts[0]] = f"--set {item}"
    return labels


def _inline_form(body: LMap) -> LMap:
    """``{params: ..., residual: [...], then: act}`` → ``{params: ..., layers: [{residual: ..., then: ...}]}``."""
    meta = {"params", "inputs", "doc", "layers"}
    rest = [k for k in body if k not in meta]
    if "layers" in body or not rest:
        return body
    node = LMap(loc=body.key_locs[rest[0]])
    for k in rest:
        node[k] = body[k]
        node.key_locs[k], node.val_locs[k] = body.key_locs[k], body.val_locs[k]
    out = LMap(loc=body.loc)
    for k in body:
        if k in meta:
            out[k] = body[k]
            out.key_locs[k], out.val_locs[k] = body.key_locs[k], body.val_locs[k]
    layers = LList([node], loc=node.loc)
    layers.item_locs = [node.loc]
    out["layers"] = layers
    out.key_locs["layers"] = out.val_locs["layers"] = node.loc  # type: ignore[assignment]
    return out


def _inline_blocks(raw: LMap) -> None:
    defs = raw.get("blocks")
    if isinstance(defs, LMap):
        for name, body in defs.items():
            if isinstance(body, LMap):
                defs[name] = _inline_form(body)


def _signatures(trees: Iterable[LMap]) -> dict[str, BlockSignature]:
    """Block parameters and inputs, read before validation so block calls can be checked anywhere."""
    sigs: dict[str, BlockSignature] = {}
    for tree in trees:
        defs = tree.get("blocks")
        if not isinstance(defs, dict):
            continue
        for name, body in defs.items():
            if not isinstance(body, dict) or name in sigs:
                continue
            params = to_plain(body.get("params"))
            inputs = body.get("inputs")
            sigs[name] = BlockSignature(
                params if isinstance(params, dict) else {},
                tuple(inputs)
                if isinstance(inputs, list) and all(isinstance(i, str) for i in inputs)
                else ("x",),
            )
    return sigs


def _resolve_include(
    name: str, base: Path, roots: tuple[Path, ...], loc: Location | None
) -> tuple[Path, str]:
    """The file an include names and how errors show it; refuses anything outside the roots."""
    if name.startswith("std:"):
        stem = name[4:]
        target = STDLIB / f"{stem}.yaml"
        if not stem.isidentifier() or not target.is_file():
            known = sorted(p.stem for p in STDLIB.glob("*.yaml"))
            raise ParseError.one(
                f"unknown standard library '{name}'{did_you_mean(stem, known)}", loc, "include"
            )
        return target, name
    if "\x00" in name:
        raise ParseError.one("include path contains a NUL byte", loc, "include")
    if Path(name).is_absolute() or name.startswith("~"):
        raise ParseError.one(f"include paths must be relative to the spec file, got {name!r}", loc, "include")
    try:
        target = (base / name).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symbolic-link loop, a name too long
        raise ParseError.one(f"include {name!r} cannot be resolved: {exc}", loc, "include") from None
    if not any(target.is_relative_to(root) for root in (*roots, STDLIB)):
        raise ParseError.one(
            f"include {name!r} resolves outside the spec's folder ({roots[0]}); includes must stay inside it "
            "(or inside a folder given with --include-root)",
            loc,
            "include",
        )
    shown = str(target.relative_to(Path.cwd())) if target.is_relative_to(Path.cwd()) else str(target)
    return target, shown


def _include_all(
    raw: LMap, base: Path, walk: _Includes, stack: tuple[Path, ...], self_path: Path | None
) -> None:
    entries = raw.get("include")
    if not isinstance(entries, LList) or walk.over:
        return  # validation reports a malformed include list
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            continue
        loc = entries.value_loc(i)
        try:
            target, shown = _resolve_include(entry, base, walk.roots, loc)
        except ParseError as exc:
            walk.diags.extend(exc.diagnostics)
            continue
        chain = (*stack, target)
        if target in stack or target == self_path:
            names = [p.name for p in ([self_path] if self_path else []) + list(chain)]
            walk.diags.append(Diagnostic(f"include cycle: {' -> '.join(names)}", loc, "include"))
            continue
        if target in walk.libraries:
            continue  # loaded once, its blocks are known
        if len(chain) > MAX_INCLUDE_DEPTH:
            walk.diags.append(Diagnostic(f"includes nested deeper than {MAX_INCLUDE_DEPTH}", loc, "include"))
            continue
        if len(walk.libraries) >= MAX_INCLUDE_FILES:
            if not walk.over:
                message = f"more than {MAX_INCLUDE_FILES} included files in one spec"
                walk.diags.append(Diagnostic(message, loc, "include"))
            walk.over = True
            return
        library = _load_library(target, shown, walk, loc)
        if library is None:
            continue
        walk.libraries[target] = library
        walk.order.append(target)
        _include_all(library.raw, target.parent, walk, chain, self_path)


def _load_library(target: Path, shown: str, walk: _Includes, loc: Location | None) -> _Library | None:
    budget = min(LIMITS.max_bytes, MAX_INCLUDE_BYTES - walk.bytes_read)
    try:
        data = read_capped(target, budget, "block library")
        walk.bytes_read += len(data)
        raw = load_text(decode(data, shown), shown)
    except LoadError as exc:
        problems = exc.diagnostics
        if budget < LIMITS.max_bytes and "larger than" in str(exc):
            problems = [
                Diagnostic(f"the included files hold more than {MAX_INCLUDE_BYTES} bytes in all", loc)
            ]
        walk.diags.extend(d if d.loc is not None else Diagnostic(d.message, loc, "include") for d in problems)
        return None
    if not isinstance(raw, LMap):
        walk.diags.append(
            Diagnostic("a block library must be a mapping with 'blocks:'", Location(shown, 1, 1))
        )
        return None
    _inline_blocks(raw)
    return _Library(raw, shown)


def _collect_blocks(
    defs: dict[str, BlockDef], raw: LMap, prefix: str, blocks: dict[str, Block], diags: list[Diagnostic]
) -> None:
    raw_defs = raw.get("blocks")
    assert isinstance(raw_defs, LMap) or not defs
    for name, definition in defs.items():
        assert isinstance(raw_defs, LMap)
        if name in blocks:
            other = blocks[name]
            where = "in an include " if not prefix and other.source != f"blocks.{name}" else ""
            diags.append(
                Diagnostic(
                    f"block '{name}' is already defined {where}({other.source})",
                    raw_defs.key_locs[name],
                    f"blocks.{name}",
                )
            )
            continue
        blocks[name] = Block(name, definition, raw_defs[name], f"{prefix}blocks.{name}")


def item_problems(items: list[AnyItem], raw: Any, path: str, fallback: Location | None) -> list[Diagnostic]:
    """The errors held by :class:`Invalid` items anywhere below ``items`` (raw: their location table)."""
    out: list[Diagnostic] = []
    for i, item in enumerate(items):
        raw_item, loc = raw_item_at(raw, i, fallback)
        where = f"{path}[{i}]"
        if isinstance(item, Invalid):
            out += diagnostics(item.model, raw_item, to_plain(raw_item), where, item.errors, loc, item.kind)
            continue
        kind = getattr(item, "kind", "")
        for sub, sub_items in children(item):
            sub_raw, sub_loc = raw_at(raw_item, sub, loc)
            label = f"{where}.{kind}" + ("" if sub[0] == kind else f".{sub[0]}")
            label += "".join(f"[{s}]" for s in sub[1:])
            out += item_problems(sub_items, sub_raw, label, sub_loc)
    return out


def raw_item_at(raw: Any, index: int, fallback: Location | None) -> tuple[Any, Location | None]:
    """Item ``index`` of a raw item list (or the single item written without a list) and its location."""
    if isinstance(raw, LList):
        return (raw[index] if index < len(raw) else None), raw.value_loc(index) or fallback
    return raw, getattr(raw, "loc", None) or fallback


def raw_at(raw: Any, path: tuple[Any, ...], fallback: Location | None) -> tuple[Any, Location | None]:
    """The raw value at a field path below an item, and its location."""
    node, loc = raw, fallback
    for part in path:
        if isinstance(node, LMap) and isinstance(part, str) and part in node:
            node, loc = node[part], node.value_loc(part) or loc
        elif isinstance(node, LList) and isinstance(part, int) and 0 <= part < len(node):
            node, loc = node[part], node.value_loc(part) or loc
        else:
            return None, loc
    return node, loc


def parse_tree(
    raw: Any,
    path: str,
    *,
    base: Path | None = None,
    sets: tuple[str, ...] = (),
    scale: str | None = None,
    digest: str = "",
    roots: Sequence[Path] | None = None,
) -> SpecDocument:
    """Validate a loaded tree (after scale and ``--set``) with its includes into a document."""
    if not isinstance(raw, LMap):
        raise ParseError.one(
            "a spec must be a mapping with specc, name, inputs and layers", Location(path, 1, 1)
        )
    labels = _var_labels(raw, scale, sets)
    _apply_scale(raw, scale)
    apply_overrides(raw, sets)
    _inline_blocks(raw)
    self_path = Path(path).resolve() if base is None else None
    base = (base or Path(path).parent).resolve()
    walk = _Includes((base, *(roots if roots is not None else _ROOTS.get())))
    _include_all(raw, base, walk, (), self_path)
    libraries = [walk.libraries[p] for p in walk.order]
    context = {"blocks": _signatures([raw, *(lib.raw for lib in libraries)])}
    spec, diags = validate(Spec, raw, "", context=context)
    diags = walk.diags + diags
    blocks: dict[str, Block] = {}
    for lib in libraries:
        model, errs = validate(LibraryFile, lib.raw, "", context=context)
        diags += errs
        if model is not None:
            _collect_blocks(model.blocks, lib.raw, f"{lib.shown}: ", blocks, diags)
    if spec is not None:
        _collect_blocks(spec.blocks, raw, "", blocks, diags)
    if diags or spec is None:
        raise ParseError(diags)
    problems = item_problems(spec.layers, raw["layers"], "layers", raw.value_loc("layers"))
    for block in blocks.values():
        where = block.raw.value_loc("layers")
        problems += item_problems(
            block.definition.layers, block.raw["layers"], f"{block.source}.layers", where
        )
    return SpecDocument(spec, raw, path, blocks, digest, scale, tuple(sets), problems, labels)


def load_spec(
    path: str | Path,
    sets: tuple[str, ...] | list[str] = (),
    scale: str | None = None,
    include_roots: Sequence[str | Path] | None = None,
) -> SpecDocument:
    """Load → parse a spec file. Raises a :class:`specc.errors.SpecError` subclass on any problem of
    the document; problems inside layer items are kept in ``problems`` (lowering reports them)."""
    name = str(path)
    data = read_capped(path, LIMITS.max_bytes, "spec file")
    raw = load_text(decode(data, name), name)
    roots = None if include_roots is None else [Path(r).resolve() for r in include_roots]
    digest = hashlib.sha256(data).hexdigest()
    return parse_tree(raw, name, sets=tuple(sets), scale=scale, digest=digest, roots=roots)


def load_spec_text(
    text: str,
    name: str = "<string>",
    sets: tuple[str, ...] | list[str] = (),
    scale: str | None = None,
    base: Path | None = None,
) -> SpecDocument:
    """Like :func:`load_spec` for spec text held in memory (includes resolve inside ``base``)."""
    raw = load_text(text, name)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return parse_tree(raw, name, base=base or Path.cwd(), sets=tuple(sets), scale=scale, digest=digest)
