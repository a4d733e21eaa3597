"""Stage 3 — lower: expand blocks, repeats, residual/dense/parallel forms and expressions into a
flat graph of op nodes whose names are spec paths.

Structural forms (language constructs, not ops)::

    {repeat: N, body: ITEMS, index: i}           # body repeated, $i = 0..N-1
    {residual: ITEMS, shortcut: auto|identity|ITEMS, then: ITEMS}
    {dense: ITEMS, num_layers: N, growth_rate: K} # x = concat(x, body(x)) N times
    {parallel: [ITEMS, ITEMS, ...], merge: concat|add, dim: 0}

Each may also carry ``name`` and ``from``. Every other item is ``OP``, ``{OP: ARGS}`` or
``{BLOCK: PARAMS}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from specc.errors import Diagnostic, Location, LowerError, did_you_mean
from specc.graph.ir import Graph, Node, Ref
from specc.lang.document import Block, SpecDocument
from specc.lang.expr import ExprError, is_expr, substitute
from specc.lang.syntax import PARAM_TYPES, RESERVED_NAMES
from specc.lang.validate import validate
from specc.load.tree import LList, LMap, to_plain
from specc.ops import OPS
from specc.ops.base import Op, TensorType

MAX_NODES = 100_000
MAX_REPEAT = 10_000
STRUCTURAL: dict[str, set[str]] = {
    "repeat": {"repeat", "body", "index", "name", "from"},
    "residual": {"residual", "shortcut", "then", "name", "from"},
    "dense": {"dense", "num_layers", "growth_rate", "index", "name", "from"},
    "parallel": {"parallel", "merge", "dim", "name", "from"},
}


FAILED = Ref("!failed")
"""Stands in for the output of an item that failed, so later items are still checked (and
inference skips them instead of reporting a cascade of follow-on errors)."""


class _Abort(Exception):
    """Stop lowering one item; its diagnostic is already recorded."""


@dataclass
class Scope:
    """Variables and node names visible to a sequence of items."""

    vars: dict[str, Any]
    names: dict[str, tuple[Ref, Location | None]] = field(default_factory=dict)
    parent: Scope | None = None
    outputs: list[Ref] = field(default_factory=list)  # outputs of the items so far (for -1, -2)
    incoming: Ref | None = None  # the sequence's input: what -1 means for its first item

    def child(self, **extra: Any) -> Scope:
        return Scope({**self.vars, **extra}, parent=self)

    def lookup(self, name: str) -> Ref | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name][0]
            scope = scope.parent
        return None

    def visible(self) -> list[str]:
        out: list[str] = []
        scope: Scope | None = self
        while scope is not None:
            out.extend(scope.names)
            scope = scope.parent
        return out


@dataclass
class _Ctx:
    """Where an item sits: its YAML path, file location and block instantiation chain."""

    src: str
    loc: Location | None
    via: tuple[Location, ...] = ()


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


class Lowerer:
    def __init__(self, doc: SpecDocument) -> None:
        self.doc = doc
        self.spec = doc.spec
        self.diags: list[Diagnostic] = []
        self.nodes: list[Node] = []
        self.paths: dict[str, Node] = {}
        self.defaults = self.spec.defaults.model_dump(mode="python")
        self.growth_checks: list[tuple[Ref, int, _Ctx]] = []
        self.ties: list[tuple[str, str, str]] = []  # (node path, parameter, owner node path)

    # ---- errors -----------------------------------------------------------------------------
    def error(self, message: str, ctx: _Ctx, loc: Location | None = None, src: str | None = None) -> _Abort:
        where = loc or ctx.loc
        if ctx.via and where is not None:
            message += " (in block used at " + ", ".join(f"line {v.line}" for v in ctx.via) + ")"
        self.diags.append(Diagnostic(message, where, src if src is not None else ctx.src))
        return _Abort()

    # ---- entry ------------------------------------------------------------------------------
    def run(self) -> Graph:
        raw = self.doc.raw
        top = _Ctx("vars", raw.value_loc("vars") if "vars" in raw else raw.loc)
        variables = self.eval_vars(raw.get("vars"), top)
        inputs = self.input_types(variables)
        dims = self.nominal_dims(variables)
        root = Scope(variables)
        for name in inputs:
            root.names[name] = (Ref(name), raw["inputs"].key_locs.get(name))
        first = Ref(next(iter(inputs)))
        last = self.seq(raw["layers"], "", "layers", root, first, (), collapse=False)
        outputs = self.outputs(root, last)
        graph = Graph(self.spec.name, inputs, self.nodes, outputs, self.spec.labels, dims, self.doc.sha256)
        graph.meta["vars"] = variables
        return graph

    def nominal_dims(self, variables: dict[str, Any]) -> dict[str, int]:
        """``dims:`` with expressions evaluated: nominal sizes of the symbolic axes."""
        out: dict[str, int] = {}
        for name, value in self.spec.dims.items():
            ctx = _Ctx(f"dims.{name}", self.doc.raw["dims"].value_loc(name))
            try:
                size = substitute(value, variables)
            except ExprError as exc:
                self.error(str(exc), ctx)
                continue
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                self.error(f"a nominal size must be a positive int, got {size!r}", ctx)
                continue
            out[name] = size
        return out

    def input_types(self, variables: dict[str, Any]) -> dict[str, TensorType]:
        """Input types, with ``$expressions`` in shapes evaluated (so scales can set resolution)."""
        out = {}
        for name, spec in self.spec.inputs.items():
            shape_node = self.doc.raw["inputs"][name]["shape"]
            dims: list[int | str] = []
            for i, d in enumerate(spec.shape):
                if is_expr(d):
                    ctx = _Ctx(f"inputs.{name}.shape[{i}]", shape_node.value_loc(i))
                    try:
                        d = substitute(d, variables)
                    except ExprError as exc:
                        self.error(str(exc), ctx)
                        d = 1
                    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                        self.error(f"an input size must be a positive int, got {d!r}", ctx)
                        d = 1
                dims.append(d)
            out[name] = TensorType(tuple(dims), spec.dtype)
        return out

    def eval_vars(self, raw_vars: Any, ctx: _Ctx) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if not isinstance(raw_vars, LMap):
            return values
        for key, value in raw_vars.items():
            try:
                values[key] = substitute(to_plain(value), values)
            except ExprError as exc:
                self.error(str(exc), ctx, raw_vars.value_loc(key), f"vars.{key}")
        return values

    def outputs(self, root: Scope, last: Ref | None) -> dict[str, Ref]:
        spec_out = self.spec.outputs
        raw = self.doc.raw
        if spec_out is None:
            return {"output": last} if last else {}
        pairs = [(n, n) for n in spec_out] if isinstance(spec_out, list) else list(spec_out.items())
        out: dict[str, Ref] = {}
        for i, (name, target) in enumerate(pairs):
            container = raw["outputs"]
            loc = container.value_loc(i) if isinstance(container, LList) else container.value_loc(name)
            ctx = _Ctx(f"outputs.{name}" if isinstance(spec_out, dict) else f"outputs[{i}]", loc)
            try:
                out[name] = self.resolve(target, root, ctx)
            except _Abort:
                pass
        return out

    # ---- sequences and items ----------------------------------------------------------------
    def seq(
        self,
        items: Any,
        prefix: str,
        src: str,
        scope: Scope,
        x: Ref | None,
        via: tuple[Location, ...],
        collapse: bool = True,
    ) -> Ref | None:
        if not isinstance(items, LList):
            items = _as_list(items)
        scope.outputs = []
        scope.incoming = x
        for i, item in enumerate(items):
            single = collapse and len(items) == 1
            ctx = _Ctx(f"{src}[{i}]", items.value_loc(i), via)
            try:
                x = self.item(item, prefix, None if single else str(i), ctx, scope, x)
            except _Abort:
                x = FAILED
            if x is not None:
                scope.outputs.append(x)
        return x

    def item(
        self, item: Any, prefix: str, index: str | None, ctx: _Ctx, scope: Scope, x: Ref | None
    ) -> Ref | None:
        if isinstance(item, str):
            key, args = item, None
        elif isinstance(item, LMap) and item:
            structural = [k for k in item if k in STRUCTURAL]
            if structural:
                return self.structural(structural[0], item, prefix, index, ctx, scope, x)
            if len(item) != 1:
                raise self.error(
                    f"a layer is one op or block, like {{conv2d: {{...}}}}; found keys {', '.join(item)}"
                    " (name/from go inside the op's arguments)",
                    ctx,
                )
            key, args = next(iter(item.items()))
            ctx = _Ctx(f"{ctx.src}.{key}", item.value_loc(key), ctx.via)
        else:
            raise self.error("a layer must be an op name or a mapping {op: {args}}", ctx)
        if key in self.doc.blocks:
            return self.call_block(self.doc.blocks[key], args, prefix, index, ctx, scope, x)
        cls = OPS.get(key)
        if cls is None:
            known = [*OPS, *self.doc.blocks, *STRUCTURAL]
            raise self.error(f"unknown op or block '{key}'{did_you_mean(key, known)}", ctx)
        return self.op_node(cls, args, prefix, index, ctx, scope, x)

    # ---- ops ----------------------------------------------------------------------------------
    def op_args(self, cls: type[Op], args: Any, ctx: _Ctx, scope: Scope) -> LMap:
        if args is None:
            args = LMap(loc=ctx.loc)
        elif not isinstance(args, LMap):
            if cls.shorthand is None:
                raise self.error(f"{cls.op_name} takes a mapping of arguments, got {to_plain(args)!r}", ctx)
            wrapped = LMap(loc=ctx.loc)
            wrapped[cls.shorthand] = args
            wrapped.val_locs[cls.shorthand] = ctx.loc  # type: ignore[assignment]
            args = wrapped
        return self.subst(args, ctx, scope)

    def subst(self, args: LMap, ctx: _Ctx, scope: Scope) -> LMap:
        out = LMap(loc=args.loc)
        out.key_locs, out.val_locs = dict(args.key_locs), dict(args.val_locs)
        failed = False
        for k, v in args.items():
            try:
                out[k] = substitute(v, scope.vars)
            except ExprError as exc:
                self.error(str(exc), ctx, args.value_loc(k), f"{ctx.src}.{k}")
                failed = True
        if failed:
            raise _Abort()
        return out

    def fill_defaults(self, cls: type[Op], args: LMap) -> None:
        fills = {**cls.from_defaults, "init": "init", "bias_init": "bias_init"}
        for fld, key in fills.items():
            if args.get(fld) is None and self.defaults.get(key) is not None:
                value = self.defaults[key]
                args[fld] = value.model_dump() if isinstance(value, BaseModel) else value

    def op_node(
        self,
        cls: type[Op],
        raw_args: Any,
        prefix: str,
        index: str | None,
        ctx: _Ctx,
        scope: Scope,
        x: Ref | None,
    ) -> Ref:
        args = self.op_args(cls, raw_args, ctx, scope)
        src_from = args.pop("from", None)
        self.fill_defaults(cls, args)
        op, diags = validate(cls, args, ctx.src, ctx.loc)
        if op is None:
            for d in diags:
                self.error(d.message, ctx, d.loc, d.path)
            raise _Abort()
        inputs = self.inputs_for(src_from, args, cls.min_inputs, cls.op_name, ctx, scope, x)
        ref = self.add_node(op, inputs, prefix, index, op.name, ctx, scope)
        for param, owner in op.tied().items():
            tctx = _Ctx(f"{ctx.src}.tie", ctx.loc, ctx.via)
            self.ties.append((ref.node, param, self.resolve(owner, scope, tctx).node))
        return ref

    def inputs_for(
        self, src_from: Any, args: LMap, min_inputs: int, what: str, ctx: _Ctx, scope: Scope, x: Ref | None
    ) -> list[Ref]:
        if src_from is None:
            if min_inputs > 1:
                raise self.error(f"{what} needs {min_inputs} or more inputs: give from: [a, b]", ctx)
            if x is None:
                raise self.error("this layer has no input: give it from:", ctx)
            return [x]
        refs = src_from if isinstance(src_from, list) else [src_from]
        fctx = _Ctx(
            f"{ctx.src}.from", args.value_loc("from") if "from" in args.val_locs else ctx.loc, ctx.via
        )
        return [self.resolve(r, scope, fctx) for r in refs]

    def add_node(
        self,
        op: Op,
        inputs: list[Ref],
        prefix: str,
        index: str | None,
        name: str | None,
        ctx: _Ctx,
        scope: Scope,
    ) -> Ref:
        path = join(prefix, name or index or "")
        if not path:
            path = op.op_name
        self.register_name(name, path, ctx, scope)
        if path in self.paths:
            raise self.error(f"node path '{path}' is used twice", ctx)
        if len(self.nodes) >= MAX_NODES:
            raise self.error(f"the network has more than {MAX_NODES} nodes", ctx)
        node = Node(path, op, inputs, ctx.loc, ctx.src, ctx.via)
        self.nodes.append(node)
        self.paths[path] = node
        return Ref(path)

    def register_name(self, name: str | None, path: str, ctx: _Ctx, scope: Scope) -> None:
        if name is None:
            return
        if name in RESERVED_NAMES:
            raise self.error(
                f"'{name}' is reserved (it is a torch.nn.Module attribute); choose another name", ctx
            )
        if name in scope.names:
            first = scope.names[name][1]
            where = f" (first at line {first.line})" if first else ""
            raise self.error(f"name '{name}' is already used in this scope{where}", ctx)
        scope.names[name] = (Ref(path), ctx.loc)

    # ---- references ---------------------------------------------------------------------------
    def resolve(self, ref: Any, scope: Scope, ctx: _Ctx) -> Ref:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise self.error(f"from: expects a node name, an input name or -1/-2/..., got {ref!r}", ctx)
        if isinstance(ref, int):
            history = scope.outputs if scope.incoming is None else [scope.incoming, *scope.outputs]
            if ref >= 0 or -ref > len(history):
                raise self.error(f"from: {ref} does not point at an earlier layer of this sequence", ctx)
            return history[ref]
        name, _, idx = ref.partition(":")
        index = 0
        if idx:
            if not idx.isdigit():
                raise self.error(f"from: '{ref}': the output index after ':' must be a number", ctx)
            index = int(idx)
        found = scope.lookup(name)
        if found is None and name in self.paths:
            found = Ref(name)
        if found is None:
            raise self.error(f"unknown reference '{name}'{did_you_mean(name, scope.visible())}", ctx)
        return Ref(found.node, index)

    # ---- blocks -------------------------------------------------------------------------------
    def call_block(
        self,
        block: Block,
        raw_args: Any,
        prefix: str,
        index: str | None,
        ctx: _Ctx,
        scope: Scope,
        x: Ref | None,
    ) -> Ref | None:
        args = self.subst(raw_args if isinstance(raw_args, LMap) else LMap(loc=ctx.loc), ctx, scope)
        if raw_args is not None and not isinstance(raw_args, LMap):
            raise self.error(f"block '{block.name}' takes a mapping of parameters", ctx)
        name = args.pop("name", None)
        src_from = args.pop("from", None)
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise self.error(f"name must be an identifier, got {name!r}", ctx, args.value_loc("name"))
        params = self.bind_params(block, args, ctx)
        inputs = self.inputs_for(
            src_from, args, len(block.definition.inputs), f"block '{block.name}'", ctx, scope, x
        )
        if len(inputs) != len(block.definition.inputs):
            raise self.error(
                f"block '{block.name}' takes inputs {block.definition.inputs}, got {len(inputs)}", ctx
            )
        path = join(prefix, name or index or "")
        inner = Scope({**self.root_vars(scope), **params})
        for input_name, ref in zip(block.definition.inputs, inputs, strict=True):
            inner.names[input_name] = (ref, None)
        via = (*ctx.via, ctx.loc) if ctx.loc else ctx.via
        out = self.seq(block.raw["layers"], path, f"{block.source}.layers", inner, inputs[0], via)
        if out is not None and name:
            self.register_name(name, out.node, ctx, scope)
        return out

    def root_vars(self, scope: Scope) -> dict[str, Any]:
        while scope.parent is not None:
            scope = scope.parent
        return scope.vars

    def bind_params(self, block: Block, args: LMap, ctx: _Ctx) -> dict[str, Any]:
        declared = block.definition.params
        values: dict[str, Any] = {}
        for key in args:
            if key not in declared:
                raise self.error(
                    f"block '{block.name}' has no parameter '{key}'{did_you_mean(key, declared)}",
                    ctx,
                    args.key_locs.get(key),
                )
        for key, decl in declared.items():
            required = isinstance(decl, str) and decl in PARAM_TYPES
            if key in args:
                values[key] = to_plain(args[key])
                if required and not _type_ok(decl, values[key]):
                    raise self.error(
                        f"parameter '{key}' of block '{block.name}' must be {decl}, got {values[key]!r}",
                        ctx,
                        args.value_loc(key),
                    )
            elif required:
                raise self.error(f"block '{block.name}' needs parameter '{key}' ({decl})", ctx)
            else:
                values[key] = decl
        return values

    # ---- structural forms -----------------------------------------------------------------
    def structural(
        self, kind: str, item: LMap, prefix: str, index: str | None, ctx: _Ctx, scope: Scope, x: Ref | None
    ) -> Ref | None:
        allowed = STRUCTURAL[kind]
        for key in item:
            if key not in allowed:
                others = [k for k in item if k in STRUCTURAL and k != kind]
                why = (
                    f" ('{kind}' and '{others[0]}' cannot share one item)"
                    if others
                    else did_you_mean(key, allowed)
                )
                raise self.error(f"unknown key '{key}' in a {kind} item{why}", ctx, item.key_locs[key])
        ctx = _Ctx(f"{ctx.src}.{kind}", ctx.loc, ctx.via)
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise self.error(f"name must be an identifier, got {name!r}", ctx, item.value_loc("name"))
        if "from" in item:
            x = self.inputs_for(to_plain(item["from"]), item, 1, kind, ctx, scope, x)[0]
        if x is None:
            raise self.error("this layer has no input", ctx)
        path = join(prefix, name or index or "")
        handler: Callable[..., Ref | None] = getattr(self, f"lower_{kind}")
        out = handler(item, path, ctx, scope, x)
        if out is not None and name:
            self.register_name(name, out.node, ctx, scope)
        return out

    def value(
        self,
        item: LMap,
        key: str,
        ctx: _Ctx,
        scope: Scope,
        kind: type | tuple[type, ...],
        default: Any = None,
        low: int | None = None,
        high: int | None = None,
    ) -> Any:
        raw = item.get(key, default)
        try:
            value = substitute(to_plain(raw), scope.vars) if is_expr(raw) else to_plain(raw)
        except ExprError as exc:
            raise self.error(str(exc), ctx, item.value_loc(key), f"{ctx.src}.{key}") from None
        if (
            isinstance(value, bool)
            and bool not in (kind if isinstance(kind, tuple) else (kind,))
            or not isinstance(value, kind)
        ):
            raise self.error(f"'{key}' must be {_kind_name(kind)}, got {value!r}", ctx, item.value_loc(key))
        if isinstance(value, int) and (
            (low is not None and value < low) or (high is not None and value > high)
        ):
            raise self.error(
                f"'{key}' must be between {low} and {high}, got {value}", ctx, item.value_loc(key)
            )
        return value

    def index_name(self, item: LMap, ctx: _Ctx, scope: Scope) -> str:
        name = self.value(item, "index", ctx, scope, str, "i")
        if not isinstance(name, str) or not name.isidentifier():
            raise self.error(f"index must be a variable name, got {name!r}", ctx, item.value_loc("index"))
        return name

    def lower_repeat(self, item: LMap, path: str, ctx: _Ctx, scope: Scope, x: Ref) -> Ref | None:
        count = self.value(item, "repeat", ctx, scope, int, low=0, high=MAX_REPEAT)
        if "body" not in item:
            raise self.error("repeat needs a body: {repeat: N, body: [...]}", ctx)
        var = self.index_name(item, ctx, scope)
        out: Ref | None = x
        for k in range(count):
            inner = scope.child(**{var: k})
            out = self.seq(item["body"], join(path, str(k)), f"{ctx.src}.body", inner, out, ctx.via)
            if out is None:
                return None
        return out

    def lower_residual(self, item: LMap, path: str, ctx: _Ctx, scope: Scope, x: Ref) -> Ref | None:
        body = self.seq(item["residual"], path, ctx.src, scope.child(), x, ctx.via, collapse=False)
        if body is None:
            return None
        shortcut = item.get("shortcut", "auto")
        sctx = _Ctx(
            f"{ctx.src}.shortcut", item.value_loc("shortcut") if "shortcut" in item else ctx.loc, ctx.via
        )
        if shortcut == "identity":
            short: Ref | None = x
        elif shortcut == "auto":
            proj = self.op_args(OPS["projection"], None, sctx, scope)
            self.fill_defaults(OPS["projection"], proj)
            op, _ = validate(OPS["projection"], proj, sctx.src)
            assert op is not None
            short = self.add_node(op, [x, body], join(path, "shortcut"), None, None, sctx, scope)
        elif isinstance(shortcut, (LList, LMap)):
            short = self.seq(shortcut, join(path, "shortcut"), sctx.src, scope.child(), x, ctx.via)
        else:
            raise self.error(f"shortcut must be auto, identity or a list of layers, got {shortcut!r}", sctx)
        if short is None:
            return None
        add = OPS["add"]()
        out = self.add_node(add, [body, short], join(path, "add"), None, None, ctx, scope)
        if "then" in item:
            return self.seq(item["then"], join(path, "then"), f"{ctx.src}.then", scope.child(), out, ctx.via)
        return out

    def lower_dense(self, item: LMap, path: str, ctx: _Ctx, scope: Scope, x: Ref) -> Ref | None:
        count = self.value(item, "num_layers", ctx, scope, int, low=1, high=MAX_REPEAT)
        growth = self.value(item, "growth_rate", ctx, scope, int, 0, low=0) if "growth_rate" in item else None
        var = self.index_name(item, ctx, scope)
        extra = {"growth_rate": growth} if growth is not None else {}
        out: Ref | None = x
        for k in range(count):
            assert out is not None
            inner = scope.child(**{var: k}, **extra)
            new = self.seq(item["dense"], join(path, str(k)), ctx.src, inner, out, ctx.via)
            if new is None:
                return None
            cat = OPS["concat"].model_validate({"dim": 0})
            out = self.add_node(cat, [out, new], join(path, f"cat{k}"), None, None, ctx, scope)
            if growth is not None:
                self.growth_checks.append((new, growth, ctx))
        return out

    def lower_parallel(self, item: LMap, path: str, ctx: _Ctx, scope: Scope, x: Ref) -> Ref | None:
        branches = item["parallel"]
        if not isinstance(branches, LList) or len(branches) < 2:
            raise self.error("parallel needs a list of two or more branches", ctx)
        merge = self.value(item, "merge", ctx, scope, str, "concat")
        if merge not in ("concat", "add"):
            raise self.error(f"merge must be concat or add, got {merge!r}", ctx, item.value_loc("merge"))
        dim = self.value(item, "dim", ctx, scope, int, 0)
        outs: list[Ref] = []
        for b, branch in enumerate(branches):
            bctx = f"{ctx.src}[{b}]"
            if isinstance(branch, LList) and not branch:
                outs.append(x)
                continue
            out = self.seq(branch, join(path, str(b)), bctx, scope.child(), x, ctx.via)
            if out is None:
                return None
            outs.append(out)
        op = OPS["concat"].model_validate({"dim": dim}) if merge == "concat" else OPS["add"]()
        return self.add_node(op, outs, join(path, "merge"), None, None, ctx, scope)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "an integer", str: "a string", float: "a number"}.get(k, k.__name__) for k in kinds
    )


def _type_ok(decl: str, value: Any) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, list),
        "any": lambda v: True,
    }
    return checks[decl](value)


def _as_list(items: Any) -> LList:
    out = LList([items], loc=getattr(items, "loc", None))
    out.item_locs = [getattr(items, "loc", None)]
    return out


def lower_collect(doc: SpecDocument) -> tuple[Graph, list[Diagnostic]]:
    """Lower as far as possible: the graph of every item that lowered, and the problems found."""
    lowerer = Lowerer(doc)
    graph = lowerer.run()
    graph.meta["growth_checks"] = [(ref, k, c.src, c.loc) for ref, k, c in lowerer.growth_checks]
    graph.meta["ties"] = list(lowerer.ties)
    return graph, lowerer.diags


def lower(doc: SpecDocument) -> Graph:
    """Lower a parsed document to a flat graph. Raises :class:`LowerError` with every problem found."""
    graph, diags = lower_collect(doc)
    if diags:
        raise LowerError(diags)
    return graph
