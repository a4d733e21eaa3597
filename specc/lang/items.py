"""Layer items — the entries of ``layers:`` and of block bodies — as validated models.

An item is an op (``relu``, ``{conv2d: {...}}``, ``{dropout: 0.5}``), a block call
(``{basic: {out: 64, stride: 2}}``) or a structural form (``repeat``, ``residual``, ``dense``,
``parallel``). Every item may carry ``if: "<expr>"``: when it gives false the item is left out.
Fields accept a value or a ``$expression``; expressions get their values when the item is lowered
(they may read block parameters, repeat indices and ``$in``), so the models check everything that
does not depend on them: keys, literal values and their types, block parameters, op names.

One bad item does not spoil the document: it validates to :class:`Invalid` (holding its errors),
the rest of the document validates normally, and lowering skips the bad item, so all errors of a
file — these and the shape errors of the other items — are reported together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)

from specc.errors import did_you_mean
from specc.ops.registry import OPS

IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_REPEAT = 10_000
PARAM_TYPES = {"int", "float", "bool", "str", "list", "any"}
RESERVED_PARAMS = frozenset({"name", "from", "if", "in"})

LAYER_MARK: dict[str, Any] = {"x-specc": "layer"}
"""Where an item sits in a model's JSON schema; ``specc.schema`` points it at the Layer definition."""
EXPR_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"\$",
    "description": "expression, e.g. $width * 2",
}


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and "$" in value


def _or_expr(schema: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [schema, EXPR_SCHEMA]})


def _ranged_int(low: int, high: int | None) -> Any:
    """An int in [low, high] or an expression (checked once it has a value)."""
    bounds = f"between {low} and {high}" if high is not None else f"≥ {low}"

    def check(v: Any) -> Any:
        if is_expression(v):
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            raise ValueError(f"must be an integer {bounds} or a $expression, got {v!r}")
        return v

    schema: dict[str, Any] = {
        "type": "integer",
        "minimum": low,
        **({"maximum": high} if high is not None else {}),
    }
    return Annotated[int | str, PlainValidator(check), _or_expr(schema)]


def _word(*choices: str) -> Any:
    """One of ``choices`` or an expression giving one."""

    def check(v: Any) -> Any:
        if v in choices or is_expression(v):
            return v
        raise ValueError(f"must be {' or '.join(choices)} (or a $expression), got {v!r}")

    return Annotated[str, PlainValidator(check), _or_expr({"enum": list(choices)})]


def _check_name(v: Any) -> str:
    if isinstance(v, str) and v.isidentifier() and v.isascii():
        return v
    raise ValueError(f"must be a name (letters, digits and _, not starting with a digit), got {v!r}")


def _check_cond(v: Any) -> bool | str:
    if isinstance(v, bool) or is_expression(v):
        return v  # type: ignore[no-any-return]
    raise ValueError(f"if: must be true, false or a $expression, got {v!r}")


def _check_unit(v: Any) -> float | str:
    if is_expression(v):
        return v  # type: ignore[no-any-return]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ValueError(f"must be a probability in [0, 1) or a $expression, got {v!r}")
    return float(v)


def _check_int(v: Any) -> int | str:
    if is_expression(v) or (isinstance(v, int) and not isinstance(v, bool)):
        return v  # type: ignore[no-any-return]
    raise ValueError(f"must be an integer or a $expression, got {v!r}")


Name = Annotated[str, PlainValidator(_check_name), WithJsonSchema({"type": "string", "pattern": IDENT})]
Ref = int | str
"""A reference: a node or input name, ``name:K`` (output K), or -1/-2/... (earlier items)."""
Cond = Annotated[bool | str, PlainValidator(_check_cond), _or_expr({"type": "boolean"})]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, populate_by_name=True
    )


@dataclass(frozen=True)
class Invalid:
    """An item that did not validate: its errors (pydantic-style dicts, ``loc`` relative to the item)
    and the model they refer to (for "did you mean" hints). Lowering skips it."""

    errors: list[dict[str, Any]]
    model: type[BaseModel] | None = None
    kind: str = ""


def problem(
    message: str, loc: tuple[Any, ...] = (), *, at_key: bool = False, path: tuple[Any, ...] | None = None
) -> dict[str, Any]:
    """A custom item error: ``loc`` says where (the value, or its key with ``at_key``), ``path``
    what the message names (default: ``loc``)."""
    return {
        "type": "specc",
        "loc": loc,
        "msg": message,
        "at_key": at_key,
        "path": loc if path is None else path,
    }


@dataclass(frozen=True)
class BlockSignature:
    """What a call needs to know of a block: its parameters (type name = required, else default)
    and its input names."""

    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ("x",)


def _type_ok(decl: str, value: Any) -> bool:
    if decl == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if decl == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if decl == "bool":
        return isinstance(value, bool)
    if decl == "str":
        return isinstance(value, str)
    if decl == "list":
        return isinstance(value, list)
    return True


def param_type_problem(block: str, name: str, decl: Any, value: Any) -> str | None:
    """The message when ``value`` (evaluated) does not fit the declared type of a required param."""
    if isinstance(decl, str) and decl in PARAM_TYPES and not _type_ok(decl, value):
        return f"parameter '{name}' of block '{block}' must be {decl}, got {value!r}"
    return None


def _listify(value: Any) -> Any:
    """``body: {basic: ...}`` and ``then: act`` are one-item lists."""
    return value if isinstance(value, list) else [value]


class OpCall(_Strict):
    """``relu``, ``{conv2d: {...}}`` or ``{dropout: 0.5}``: ``args`` as written (a mapping, a scalar
    for the op's shorthand, or none); they are substituted and checked by the op's model when lowered."""

    op: str
    args: Any = None
    if_: Cond | None = Field(None, alias="if")


class BlockCall(_Strict):
    """``{basic: {out: 64, stride: 2, name: b1, from: x}}``: parameters as written (values or
    expressions), checked here against the block's declared parameters."""

    block: str
    params: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    from_: Ref | list[Ref] | None = Field(None, alias="from")
    if_: Cond | None = Field(None, alias="if")


class _Form(_Strict):
    """Fields every structural form has."""

    kind: ClassVar[str] = ""
    name: Name | None = Field(None, description="node name for `from:` references; prefixes the paths inside")
    from_: Ref | list[Ref] | None = Field(
        None, alias="from", description="input (default: the previous item)"
    )
    if_: Cond | None = Field(None, alias="if", description="keep the item only when this is true")


if TYPE_CHECKING:
    Item: TypeAlias = "OpCall | BlockCall | Repeat | Residual | Dense | Parallel | Invalid"
else:  # validated by hand (dispatch on the item's keys), described as the Layer schema
    Item = Annotated[
        Any,
        WrapValidator(lambda v, _h, info: validate_item(v, info.context)),
        WithJsonSchema(LAYER_MARK),
    ]
_ITEMS_SCHEMA = {"anyOf": [{"type": "array", "items": LAYER_MARK}, LAYER_MARK]}
Items = Annotated[list[Item], BeforeValidator(_listify), WithJsonSchema(_ITEMS_SCHEMA)]
"""A list of items, or one item written alone."""


def _check_shortcut(v: Any, info: ValidationInfo) -> str | list[AnyItem]:
    if isinstance(v, str):
        if v in ("auto", "identity", "none") or is_expression(v):
            return v
        raise ValueError(f"must be auto, identity, none, a $expression or a list of layers, got {v!r}")
    if isinstance(v, dict):
        v = [v]
    if isinstance(v, list):
        return [validate_item(item, info.context) for item in v]
    raise ValueError(f"must be auto, identity, none, a $expression or a list of layers, got {v!r}")


Shortcut = Annotated[
    str | list[Item],
    PlainValidator(_check_shortcut),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": ["auto", "identity", "none"]},
                EXPR_SCHEMA,
                {"type": "array", "items": LAYER_MARK},
                {"allOf": [LAYER_MARK, {"type": "object"}]},  # one layer, written as a mapping
            ]
        }
    ),
]


class Repeat(_Form):
    """``{repeat: N, body: ITEMS, index: i}``: the body N times, ``$i`` = 0..N-1; paths NAME.0, NAME.1, ..."""

    kind: ClassVar[str] = "repeat"
    repeat: _ranged_int(0, MAX_REPEAT) = Field(description="how many times")  # type: ignore[valid-type]
    body: Items
    index: Name = Field("i", description="name of the iteration variable")


class Residual(_Form):
    """``{residual: ITEMS, shortcut: auto, then: ITEMS, drop_path: p}``: y = then(drop_path(body(x)) + shortcut(x))."""

    kind: ClassVar[str] = "residual"
    residual: Items
    shortcut: Shortcut = Field(
        "auto",
        description="auto (identity, or a projection when shapes differ) | identity | none (no add) | "
        "[layers] | an expression giving one of the words",
    )
    then: Items | None = Field(None, description="layers after the add")
    drop_path: Annotated[
        float | str,
        PlainValidator(_check_unit),
        _or_expr({"type": "number", "minimum": 0, "exclusiveMaximum": 1}),
    ] = Field(
        0.0, description="stochastic depth: drop the body per sample with this probability while training"
    )


class Dense(_Form):
    """``{dense: ITEMS, num_layers: N, growth_rate: K}``: x = concat(x, body(x)) N times (DenseNet)."""

    kind: ClassVar[str] = "dense"
    dense: Items
    num_layers: _ranged_int(1, MAX_REPEAT)  # type: ignore[valid-type]
    growth_rate: _ranged_int(0, None) | None = Field(  # type: ignore[valid-type]
        None, description="channels each body adds ($growth_rate in the body); checked"
    )
    index: Name = "i"


class Parallel(_Form):
    """``{parallel: [ITEMS, ITEMS, ...], merge: concat|add, dim: 0}``: branches from one input, merged."""

    kind: ClassVar[str] = "parallel"
    parallel: list[Items] = Field(description="two or more branches; [] is the identity")
    merge: _word("concat", "add") = "concat"  # type: ignore[valid-type]
    dim: Annotated[int | str, PlainValidator(_check_int), _or_expr({"type": "integer"})] = Field(
        0, description="concat axis (0 = channels, batch implicit)"
    )

    @model_validator(mode="before")
    @classmethod
    def _two_branches(cls, data: Any) -> Any:
        if isinstance(data, dict) and (
            not isinstance(data.get("parallel"), list) or len(data["parallel"]) < 2
        ):
            raise ValueError("parallel needs a list of two or more branches")
        return data


FORMS: dict[str, type[_Form]] = {cls.kind: cls for cls in (Repeat, Residual, Dense, Parallel)}
Form = Repeat | Residual | Dense | Parallel
AnyItem = OpCall | BlockCall | Repeat | Residual | Dense | Parallel | Invalid


def validate_item(value: Any, context: Mapping[str, Any] | None) -> AnyItem:
    """Validate one item; never raises: a bad item becomes :class:`Invalid`."""
    blocks: Mapping[str, BlockSignature] = (context or {}).get("blocks", {})
    if isinstance(value, str):
        return _call(value, None, None, blocks, (), None)
    if not isinstance(value, dict) or not value:
        return Invalid([problem("a layer must be an op name or a mapping {op: {args}}")])
    forms = [k for k in value if k in FORMS]
    if forms:
        if len(forms) > 1:
            return Invalid(
                [
                    problem(
                        f"'{forms[0]}' and '{forms[1]}' cannot share one item",
                        (forms[1],),
                        at_key=True,
                        path=(),
                    )
                ]
            )
        cls = FORMS[forms[0]]
        try:
            form: Form = cls.model_validate(value, context=context)  # type: ignore[assignment]
            return form
        except ValidationError as exc:
            return Invalid([dict(e) for e in exc.errors(include_url=False)], cls, cls.kind)
    keys = [k for k in value if k != "if"]
    if len(keys) != 1:
        return Invalid(
            [
                problem(
                    f"a layer is one op or block, like {{conv2d: {{...}}}}; found keys {', '.join(value)}"
                    " (name/from go inside the op's arguments)"
                )
            ]
        )
    key = keys[0]
    return _call(key, value[key], value.get("if"), blocks, (key,), value)


def _call(
    key: str, args: Any, cond: Any, blocks: Mapping[str, BlockSignature], loc: tuple[Any, ...], item: Any
) -> AnyItem:
    errors: list[dict[str, Any]] = []
    if item is not None and "if" in item and not (isinstance(cond, bool) or is_expression(cond)):
        errors.append(problem(f"if: must be true, false or a $expression, got {cond!r}", ("if",)))
    if key in blocks:
        return _block_call(key, args, cond, blocks[key], loc, errors)
    cls = OPS.get(key)
    if cls is None:
        known = [*OPS, *blocks, *FORMS]
        errors.append(problem(f"unknown op or block '{key}'{did_you_mean(key, known)}", loc))
    elif args is not None and not isinstance(args, dict) and cls.shorthand is None:
        errors.append(problem(f"{key} takes a mapping of arguments, got {args!r}", loc))
    if errors:
        return Invalid(errors)
    return OpCall(op=key, args=args, if_=cond)


def _block_call(
    key: str,
    args: Any,
    cond: Any,
    sig: BlockSignature,
    loc: tuple[Any, ...],
    errors: list[dict[str, Any]],
) -> AnyItem:
    if args is not None and not isinstance(args, dict):
        return Invalid([*errors, problem(f"block '{key}' takes a mapping of parameters", loc)])
    given = dict(args or {})
    name, ref = given.pop("name", None), given.pop("from", None)
    if name is not None and not (isinstance(name, str) and (name.isidentifier() or "$" in name)):
        errors.append(problem(f"name must be an identifier, got {name!r}", (*loc, "name")))
    for param, value in given.items():
        if param not in sig.params:
            hint = did_you_mean(param, sig.params)
            errors.append(
                problem(
                    f"block '{key}' has no parameter '{param}'{hint}", (*loc, param), at_key=True, path=loc
                )
            )
            continue
        decl = sig.params[param]
        message = None if is_expression(value) else param_type_problem(key, param, decl, value)
        if message:
            errors.append(problem(message, (*loc, param), path=loc))
    for param, decl in sig.params.items():
        if param not in given and isinstance(decl, str) and decl in PARAM_TYPES:
            errors.append(problem(f"block '{key}' needs parameter '{param}' ({decl})", loc))
    if errors:
        return Invalid(errors)
    try:
        return BlockCall.model_validate(
            {"block": key, "params": given, "name": name, "from": ref, "if": cond}
        )
    except ValidationError as exc:
        return Invalid(
            [problem(e["msg"], (*loc, *e["loc"]), path=loc) for e in exc.errors(include_url=False)]
        )


def walk_items(items: list[AnyItem]) -> list[tuple[tuple[Any, ...], AnyItem]]:
    """Every item below ``items`` (structural bodies included) with its path of model fields/indices."""
    out: list[tuple[tuple[Any, ...], AnyItem]] = []
    stack: list[tuple[tuple[Any, ...], AnyItem]] = [((i,), it) for i, it in enumerate(items)]
    while stack:
        path, item = stack.pop()
        out.append((path, item))
        for sub_path, sub_items in children(item):
            stack.extend(((*path, *sub_path, i), it) for i, it in enumerate(sub_items))
    return out


def children(item: AnyItem) -> list[tuple[tuple[Any, ...], list[AnyItem]]]:
    """The item lists nested in a structural form, each with its field path."""
    if isinstance(item, Repeat):
        return [(("body",), item.body)]
    if isinstance(item, Residual):
        out: list[tuple[tuple[Any, ...], list[AnyItem]]] = [(("residual",), item.residual)]
        if isinstance(item.shortcut, list):
            out.append((("shortcut",), item.shortcut))
        if item.then is not None:
            out.append((("then",), item.then))
        return out
    if isinstance(item, Dense):
        return [(("dense",), item.dense)]
    if isinstance(item, Parallel):
        return [(("parallel", b), branch) for b, branch in enumerate(item.parallel)]
    return []
