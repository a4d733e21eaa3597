"""JSON Schema for editors (yaml-language-server) and the op reference, both from the registry."""

from __future__ import annotations

import inspect
from typing import Any

from specc.graph.lower import STRUCTURAL
from specc.ops import OPS
from specc.ops.base import Op
from specc.spec.model import BlockDef, Spec

EXPR = {"type": "string", "pattern": r"\$", "description": "expression, e.g. $width * 2"}
COMMON = {"name", "from", "init", "bias_init"}


def _allow_expr(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties", {})
    for key, sub in list(props.items()):
        props[key] = {"anyOf": [sub, EXPR], **({"description": sub["description"]} if "description" in sub else {})}
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
        {"type": "object", "required": [kind], "properties": {k: {} for k in keys}, "additionalProperties": False}
        for kind, keys in STRUCTURAL.items()
    ]
    block_call = {"type": "object", "minProperties": 1, "maxProperties": 1, "description": "a block call"}
    return {"anyOf": [{"type": "string", "enum": sorted(OPS)}, *(op_schema(c) for c in OPS.values()),
                      *structural, {"type": "string"}, block_call]}  # fmt: skip


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


def op_reference(cls: type[Op]) -> str:
    """Markdown for one op: docstring (with its YAML example) and an argument table."""
    lines = [f"### `{cls.op_name}`", "", inspect.getdoc(cls) or "", ""]
    rows = []
    for name, info in cls.model_fields.items():
        key = info.alias or name
        if key in COMMON:
            continue
        default = "required" if info.is_required() else repr(info.default)
        ann = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        rows.append(f"| `{key}` | `{ann}` | {default} | {info.description or ''} |")
    if rows:
        lines += ["| argument | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    if cls.shorthand:
        lines += [f"Scalar shorthand: `{cls.op_name}: VALUE` sets `{cls.shorthand}`.", ""]
    return "\n".join(lines).replace("Example::\n\n", "Example:\n\n```yaml\n").replace("\n\n|", "\n```\n\n|")


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
