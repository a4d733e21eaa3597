"""JSON Schema for editors (yaml-language-server) and the op reference, both from the registry."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

from specc.graph.lower import STRUCTURAL
from specc.lang.syntax import BlockDef, Spec
from specc.ops import OPS
from specc.ops.base import Op

EXPR = {"type": "string", "pattern": r"\$", "description": "expression, e.g. $width * 2"}
COMMON = {"name", "from", "init", "bias_init"}


def _allow_expr(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties", {})
    for key, sub in list(props.items()):
        props[key] = {
            "anyOf": [sub, EXPR],
            **({"description": sub["description"]} if "description" in sub else {}),
        }
    return schema


def op_schema(cls: type[Op]) -> dict[str, Any]:
    args = _allow_expr(cls.model_json_schema(by_alias=True))
    args.pop("title", None)
    variants: list[dict[str, Any]] = [args, {"type": "null"}]
    if cls.shorthand:
        variants.append(args["properties"][cls.shorthand])
    return {
        "type": "object",
        "properties": {cls.op_name: {"anyOf": variants, "description": doc_summary(cls)}},
        "required": [cls.op_name],
        "additionalProperties": False,
    }


def layer_schema() -> dict[str, Any]:
    structural = [
        {
            "type": "object",
            "required": [kind],
            "properties": {k: {} for k in keys},
            "additionalProperties": False,
        }
        for kind, keys in STRUCTURAL.items()
    ]
    block_call = {"type": "object", "minProperties": 1, "maxProperties": 1, "description": "a block call"}
    return {
        "anyOf": [
            {"type": "string", "enum": sorted(OPS)},
            *(op_schema(c) for c in OPS.values()),
            *structural,
            {"type": "string"},
            block_call,
        ]
    }


def json_schema() -> dict[str, Any]:
    """The schema of a spec file; layer items list every registered op with its arguments."""
    schema = Spec.model_json_schema()
    defs = schema.setdefault("$defs", {})
    defs["Layer"] = layer_schema()
    layers = {"type": "array", "items": {"$ref": "#/$defs/Layer"}}
    schema["properties"]["layers"] = layers
    block = BlockDef.model_json_schema()
    block["properties"]["layers"] = layers
    defs["Block"] = {k: v for k, v in block.items() if k != "$defs"}
    schema["properties"]["blocks"] = {"type": "object", "additionalProperties": {"$ref": "#/$defs/Block"}}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "specc spec (format 1)"
    return schema


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
