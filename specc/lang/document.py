"""Load a spec file with its includes, scale and ``--set`` overrides into a validated document."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specc.errors import Diagnostic, LoadError, Location, ParseError, did_you_mean
from specc.lang.syntax import BlockDef, LibraryFile, Spec
from specc.lang.validate import validate
from specc.load import LMap, apply_overrides, load_text, load_yaml_file

STDLIB = Path(__file__).resolve().parent.parent / "stdlib"
MAX_INCLUDE_DEPTH = 8


@dataclass
class Block:
    """A block definition with the raw tree it came from (for locations)."""

    name: str
    definition: BlockDef
    raw: LMap
    source: str  # "blocks.basic" or "std:resnet: blocks.basic"


@dataclass
class SpecDocument:
    """The result of load + parse: the validated spec, its raw tree and every block it can use."""

    spec: Spec
    raw: LMap
    path: str
    blocks: dict[str, Block] = field(default_factory=dict)
    sha256: str = ""
    scale: str | None = None
    overrides: tuple[str, ...] = ()


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


def _resolve_include(name: str, base: Path, loc: Location | None) -> Path:
    if name.startswith("std:"):
        stem = name[4:]
        target = STDLIB / f"{stem}.yaml"
        if not stem.isidentifier() or not target.is_file():
            known = sorted(p.stem for p in STDLIB.glob("*.yaml"))
            raise ParseError.one(
                f"unknown standard library '{name}'{did_you_mean(stem, known)}", loc, "include"
            )
        return target
    target = Path(name)
    if target.is_absolute():
        raise ParseError.one(f"include paths must be relative to the spec file, got {name!r}", loc, "include")
    return (base / target).resolve()


def _load_library(
    path: Path,
    shown: str,
    seen: tuple[Path, ...],
    blocks: dict[str, Block],
    diags: list[Diagnostic],
    loc: Location | None,
) -> None:
    if path in seen:
        diags.append(
            Diagnostic(f"include cycle: {' -> '.join(p.name for p in (*seen, path))}", loc, "include")
        )
        return
    if len(seen) > MAX_INCLUDE_DEPTH:
        diags.append(Diagnostic(f"includes nested deeper than {MAX_INCLUDE_DEPTH}", loc, "include"))
        return
    raw = load_yaml_file(path) if not shown.startswith("std:") else load_text(path.read_text(), shown)
    if not isinstance(raw, LMap):
        diags.append(Diagnostic("a block library must be a mapping with 'blocks:'", Location(shown, 1, 1)))
        return
    lib, errs = validate(LibraryFile, raw, "")
    diags.extend(errs)
    if lib is None:
        return
    for i, inc in enumerate(lib.include):
        loc = raw["include"].value_loc(i)
        try:
            target = _resolve_include(inc, path.parent, loc)
        except ParseError as exc:
            diags.extend(exc.diagnostics)
            continue
        _load_library(
            target, inc if inc.startswith("std:") else str(target), (*seen, path), blocks, diags, loc
        )
    _collect_blocks(raw, shown + ": ", blocks, diags)


def _collect_blocks(raw: LMap, prefix: str, blocks: dict[str, Block], diags: list[Diagnostic]) -> None:
    defs = raw.get("blocks")
    if not isinstance(defs, LMap):
        return
    for name, body in defs.items():
        loc = defs.value_loc(name)
        if not isinstance(body, LMap):
            diags.append(
                Diagnostic("a block is a mapping with params and layers", loc, f"{prefix}blocks.{name}")
            )
            continue
        body = _inline_form(body)
        definition, errs = validate(BlockDef, body, f"blocks.{name}", loc)
        diags.extend(errs)
        if definition is None:
            continue
        if name in blocks:
            other = blocks[name]
            diags.append(
                Diagnostic(
                    f"block '{name}' is already defined ({other.source})",
                    defs.key_locs[name],
                    f"blocks.{name}",
                )
            )
            continue
        blocks[name] = Block(name, definition, body, f"{prefix}blocks.{name}")


def _inline_form(body: LMap) -> LMap:
    """``{params: ..., residual: [...], then: act}`` → ``{params: ..., layers: [{residual: ..., then: ...}]}``."""
    meta = {"params", "inputs", "doc", "layers"}
    rest = [k for k in body if k not in meta]
    if "layers" in body or not rest:
        return body
    from specc.load import LList

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


def parse_tree(
    raw: Any,
    path: str,
    *,
    base: Path | None = None,
    sets: tuple[str, ...] = (),
    scale: str | None = None,
    digest: str = "",
) -> SpecDocument:
    """Validate a loaded tree (after scale and ``--set``) and collect its blocks and includes."""
    if not isinstance(raw, LMap):
        raise ParseError.one(
            "a spec must be a mapping with specc, name, inputs and layers", Location(path, 1, 1)
        )
    _apply_scale(raw, scale)
    apply_overrides(raw, sets)
    spec, diags = validate(Spec, raw, "")
    blocks: dict[str, Block] = {}
    if spec is not None:
        base = base or Path(path).resolve().parent
        for i, inc in enumerate(spec.include):
            loc = raw["include"].value_loc(i)
            try:
                target = _resolve_include(inc, base, loc)
                shown = inc if inc.startswith("std:") else str(Path(path).parent / inc)
                _load_library(target, shown, (), blocks, diags, loc)
            except (LoadError, ParseError) as exc:
                diags.extend(exc.diagnostics)
        local: dict[str, Block] = {}
        _collect_blocks(raw, "", local, diags)
        for name, block in local.items():
            if name in blocks:
                diags.append(
                    Diagnostic(
                        f"block '{name}' is already defined in an include ({blocks[name].source})",
                        raw["blocks"].key_locs[name],
                        f"blocks.{name}",
                    )
                )
            blocks[name] = block
    if diags or spec is None:
        raise ParseError(diags)
    return SpecDocument(spec, raw, path, blocks, digest, scale, tuple(sets))


def load_spec(
    path: str | Path, sets: tuple[str, ...] | list[str] = (), scale: str | None = None
) -> SpecDocument:
    """Load → parse a spec file. Raises a :class:`specc.errors.SpecError` subclass on any problem."""
    raw = load_yaml_file(path)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return parse_tree(raw, str(path), sets=tuple(sets), scale=scale, digest=digest)


def load_spec_text(
    text: str,
    name: str = "<string>",
    sets: tuple[str, ...] | list[str] = (),
    scale: str | None = None,
    base: Path | None = None,
) -> SpecDocument:
    """Like :func:`load_spec` for spec text held in memory (includes resolve against ``base``)."""
    raw = load_text(text, name)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return parse_tree(raw, name, base=base or Path.cwd(), sets=tuple(sets), scale=scale, digest=digest)
