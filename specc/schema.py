"""JSON Schema for editors (yaml-language-server) and the op reference, both from the models.

Every key of a spec is described: the top level and ``train:`` from their pydantic models, each op
from its op model (every argument also accepts a ``$expression``), the structural forms from
:mod:`specc.lang.items`, and a call of each bundled ``std:`` block with its parameters.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

from specc.lang.items import EXPR_SCHEMA, FORMS, LAYER_MARK, PARAM_TYPES
from specc.lang.stdlib import libraries
from specc.lang.syntax import Spec
from specc.lang.train_config import TrainConfig
from specc.ops import OPS
from specc.ops.base import Op

EXPR = EXPR_SCHEMA
COMMON = {"name", "from", "init", "bias_init"}
COND = {"anyOf": [{"type": "boolean"}, EXPR], "description": "keep the item only when this is true"}
REFS = {
    "anyOf": [{"type": ["string", "integer"]}, {"type": "array", "items": {"type": ["string", "integer"]}}],
    "description": "input(s): node or input names, name:K, or -1/-2 for earlier items",
}


def _allow_expr(schema: dict[str, Any]) -> dict[str, Any]:
    """Every value of an op's arguments may be an expression, list items included."""
    props = schema.get("properties", {})
    for key, sub in list(props.items()):
        props[key] = _with_expr(sub)
    return schema


def _with_expr(node: Any) -> Any:
    if isinstance(node, list):
        return [_with_expr(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _with_expr(v) if k in ("items", "prefixItems", "anyOf", "oneOf") else v for k, v in node.items()
    }
    if any(k in node for k in ("type", "enum", "const")) and node.get("type") not in ("object", "null"):
        extra = {"description": node["description"]} if "description" in node else {}
        return {"anyOf": [out, EXPR], **extra}
    return out


def op_schema(cls: type[Op]) -> dict[str, Any]:
    args = _allow_expr(cls.model_json_schema(by_alias=True))
    args.pop("title", None)
    args["properties"]["from"] = REFS  # lowering resolves references, -1/-2 included
    variants: list[dict[str, Any]] = [args, {"type": "null"}]
    if cls.shorthand:
        variants.append(args["properties"][cls.shorthand])
    return {
        "type": "object",
        "properties": {cls.op_name: {"anyOf": variants, "description": doc_summary(cls)}, "if": COND},
        "required": [cls.op_name],
        "additionalProperties": False,
    }


def _param_schema(decl: Any) -> dict[str, Any]:
    kinds = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "list": "array"}
    if isinstance(decl, str) and decl in PARAM_TYPES:
        base: dict[str, Any] = {"type": kinds[decl]} if decl in kinds else {}
    else:
        default_kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
        base = {"type": default_kind[type(decl)]} if type(decl) in default_kind else {}
        base["default"] = decl
    return {"anyOf": [base, EXPR]} if base.get("type") else base


def block_call_schema(name: str, params: dict[str, Any], doc: str | None) -> dict[str, Any]:
    """``{NAME: {param: value-or-expression, ..., name, from}, if: ...}`` for one block."""
    props = {p: _param_schema(d) for p, d in params.items()}
    props["name"] = {"type": "string", "description": "names the call's output; prefixes the paths inside"}
    props["from"] = REFS
    required = [p for p, d in params.items() if isinstance(d, str) and d in PARAM_TYPES]
    args: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        args["required"] = required
    variants = [args] if required else [args, {"type": "null"}]
    return {
        "type": "object",
        "properties": {name: {"anyOf": variants, "description": (doc or "").strip()}, "if": COND},
        "required": [name],
        "additionalProperties": False,
    }


def _form_schema(kind: str, defs: dict[str, Any]) -> dict[str, Any]:
    schema = FORMS[kind].model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    schema.pop("title", None)
    return schema


def layer_schema(defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One layer item: a bare op or block name, an op, a std: block call, a structural form, or a call
    of a block the spec defines itself."""
    defs = {} if defs is None else defs
    std_blocks = [b for lib in libraries() for b in lib.blocks]
    std_calls = [block_call_schema(b.name, b.definition.params, b.definition.doc) for b in std_blocks]
    known = sorted({*OPS, *FORMS, *(b.name for b in std_blocks)})
    block_call = {  # any other name: a block of the spec or of an included file
        "type": "object",
        "minProperties": 1,
        "maxProperties": 2,
        "propertyNames": {"anyOf": [{"const": "if"}, {"not": {"enum": known}}]},
        "description": "a call of a block defined in the spec or an included file: {NAME: {params}}",
    }
    return {
        "anyOf": [
            {"type": "string", "enum": sorted(OPS)},
            *(op_schema(c) for c in OPS.values()),
            *(_form_schema(kind, defs) for kind in FORMS),
            *std_calls,
            {"type": "string", "description": "a block with no required parameters"},
            block_call,
        ]
    }


def json_schema() -> dict[str, Any]:
    """The schema of a spec file: every key, every op with its arguments, every std: block call."""
    schema = Spec.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    defs["Layer"] = layer_schema(defs)
    train = TrainConfig.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs.update(train.pop("$defs", {}))
    defs["TrainConfig"] = train
    schema["properties"]["train"] = {
        "anyOf": [{"$ref": "#/$defs/TrainConfig"}, {"type": "null"}],
        "description": "training config (docs/training.md); checked by `specc check`",
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "specc spec (format 1)"
    out: dict[str, Any] = _point_at_layer(schema)
    return out


def _point_at_layer(node: Any) -> Any:
    if node == LAYER_MARK:
        return {"$ref": "#/$defs/Layer"}
    if isinstance(node, dict):
        return {k: _point_at_layer(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_point_at_layer(v) for v in node]
    return node


def doc_summary(cls: type[Op]) -> str:
    return (inspect.getdoc(cls) or "").split("\n")[0]


def _doc_markdown(doc: str) -> str:
    """Docstring → markdown: the ``Example::`` block becomes a fenced YAML block."""
    text, _, example = doc.partition("Example::")
    if not example:
        return text.strip()
    return text.strip() + "\n\n```yaml\n" + textwrap.dedent(example.strip("\n")).rstrip() + "\n```"


def _type_text(schema: dict[str, Any]) -> str:
    """A short type description from a JSON schema fragment: ``int > 0 or list of int > 0``."""
    if "anyOf" in schema:
        parts = [_type_text(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(dict.fromkeys(parts))
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}.get(
        schema.get("type", ""), ""
    )
    if schema.get("type") == "array":
        return "list of " + _type_text(schema.get("items", {}))
    bounds = [
        f"{op} {schema[k]}"
        for k, op in (
            ("exclusiveMinimum", ">"),
            ("minimum", "≥"),
            ("exclusiveMaximum", "<"),
            ("maximum", "≤"),
        )
        if k in schema
    ]
    return " ".join([kind or "object", *bounds])


def op_reference(cls: type[Op]) -> str:
    """Markdown for one op: docstring (with its YAML example) and an argument table."""
    lines = [f"### `{cls.op_name}`", "", _doc_markdown(inspect.getdoc(cls) or ""), ""]
    rows = []
    props = cls.model_json_schema(by_alias=True).get("properties", {})
    for name, info in cls.model_fields.items():
        key = info.alias or name
        if key in COMMON:
            continue
        default = "required" if info.is_required() else f"`{info.default!r}`"
        meaning = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_text(props.get(key, {}))} | {default} | {meaning} |")
    if rows:
        lines += ["| argument | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    if cls.shorthand:
        lines += [f"Scalar shorthand: `{cls.op_name}: VALUE` sets `{cls.shorthand}`.", ""]
    if cls.from_defaults:
        filled = ", ".join(f"`{f}` ← `defaults.{d}`" for f, d in cls.from_defaults.items())
        lines += [f"Unset fields taken from the spec's defaults: {filled}.", ""]
    return "\n".join(lines)


def ops_text() -> str:
    """``specc ops``: one line per op, grouped by category."""
    groups: dict[str, list[type[Op]]] = {}
    for cls in OPS.values():
        groups.setdefault(cls.category, []).append(cls)
    out = []
    for cat in sorted(groups):
        out.append(f"{cat}:")
        for cls in sorted(groups[cat], key=lambda c: c.op_name):
            out.append(f"  {cls.op_name:<20} {doc_summary(cls)}")
    return "\n".join(out)
