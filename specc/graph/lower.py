"""Stage 3 — lower: expand blocks, repeats, residual/dense/parallel forms, conditions and expressions
into a flat graph of op nodes whose names are spec paths, inferring each node as it is created.

Lowering walks the validated items of the document (:mod:`specc.lang.items`); the raw YAML tree is
read only for the locations of errors. Each node is inferred the moment it exists, so an expression
can read the type of its sequence's input (``$in.channels``, ``$in.shape[-1]``) and ``if:`` can
choose between forms by shape; inference stays one linear pass.

Budgets: at most :data:`MAX_NODES` nodes and :data:`MAX_STEPS` items expanded (kept or left out by
``if:``); both are checked while expanding, so a nested ``repeat`` of a million iterations stops at
the limit with one error instead of growing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from specc.errors import Diagnostic, Location, LowerError, ShapeError, did_you_mean
from specc.expr import (
    IN,
    UNKNOWN,
    ExprError,
    InputView,
    UnknownValue,
    ValueProblem,
    expressions_in,
    is_expr,
    referenced,
    substitute,
)
from specc.graph.infer import check_node, input_types, via_text
from specc.graph.ir import Graph, Node, Ref, Tie
from specc.lang.document import Block, SpecDocument, raw_at, raw_item_at
from specc.lang.items import (
    MAX_REPEAT,
    AnyItem,
    BlockCall,
    Dense,
    Form,
    Invalid,
    OpCall,
    Parallel,
    Repeat,
    Residual,
    param_type_problem,
)
from specc.lang.syntax import PARAM_TYPES, RESERVED_NAMES
from specc.lang.validate import validate
from specc.load.tree import LList, LMap
from specc.ops import OPS
from specc.ops.base import InferContext, Inferred, Op, TensorType

MAX_NODES = 100_000
MAX_STEPS = 200_000

FAILED = Ref("!failed")
"""Stands in for the output of an item that failed, so later items are still checked (and
inference skips them instead of reporting a cascade of follow-on errors)."""
DROPPED = Ref("!dropped")
"""What an item left out by its ``if:`` gives: the sequence goes on with the previous output."""


class _Abort(Exception):
    """Stop lowering one item; its diagnostic is already recorded (or it has none of its own)."""


class _Budget(Exception):
    """The node or expansion budget is spent: stop lowering altogether (one diagnostic recorded)."""


@dataclass(frozen=True)
class Origin:
    """Where a variable's value was written: ``vars.num_heads`` at line 7, ``--set width=0``."""

    label: str
    loc: Location | None

    def text(self, at: Location | None) -> str:
        if self.label.startswith("--set") or self.loc is None:
            return self.label
        where = f"line {self.loc.line}" if at is not None and at.file == self.loc.file else f"{self.loc}"
        return f"{self.label} at {where}"


@dataclass
class Scope:
    """Variables (with where their values came from) and node names visible to a sequence."""

    vars: dict[str, Any]
    origins: dict[str, tuple[Origin, ...]]
    names: dict[str, tuple[Ref, Location | None]] = field(default_factory=dict)
    parent: Scope | None = None
    outputs: list[Ref] = field(default_factory=list)  # outputs of the items so far (for -1, -2)
    incoming: Ref | None = None  # the sequence's input: what -1 means for its first item
    dropped: dict[str, Location | None] = field(default_factory=dict)  # names left out by if:

    def child(
        self, extra: dict[str, Any] | None = None, origins: dict[str, tuple[Origin, ...]] | None = None
    ) -> Scope:
        return Scope({**self.vars, **(extra or {})}, origins or self.origins, parent=self)

    def lookup(self, name: str) -> Ref | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name][0]
            scope = scope.parent
        return None

    def dropped_at(self, name: str) -> Location | None | bool:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.dropped:
                return scope.dropped[name]
            scope = scope.parent
        return False

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


def _freeze(value: Any) -> Any:
    """A hashable key for op arguments (types kept apart: 1, 1.0 and True are different)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("[", *(_freeze(v) for v in value))
    return (type(value), value)


@dataclass
class Lowered:
    """What lowering gives: the graph (every node that could be made, inferred) and the problems of
    lowering (``problems``) and of shape inference (``shape_problems``)."""

    graph: Graph
    problems: list[Diagnostic]
    shape_problems: list[Diagnostic]


class Lowerer:
    def __init__(self, doc: SpecDocument) -> None:
        self.doc = doc
        self.spec = doc.spec
        self.diags: list[Diagnostic] = []
        self.shape_diags: list[Diagnostic] = []
        self.nodes: list[Node] = []
        self.paths: dict[str, Node] = {}
        self.groups: set[str] = set()  # proper prefixes of node paths (module containers)
        self.types: dict[str, list[TensorType]] = {}
        self.ictx = InferContext()
        self.defaults = self.spec.defaults.model_dump(mode="python")
        self.ties: list[Tie] = []
        self.steps = 0
        self._reported: dict[tuple[int, str, Location | None, str], list[Any]] = {}
        self._ops: dict[Any, Op] = {}
        self._fixed: dict[tuple[type[Op], int], tuple[Any, Op, Any, LMap, dict[str, Any]]] = {}
        self._inferred: dict[tuple[int, tuple[TensorType, ...]], tuple[Op, Inferred]] = {}

    # ---- errors -----------------------------------------------------------------------------
    def error(self, message: str, ctx: _Ctx, loc: Location | None = None, src: str | None = None) -> _Abort:
        where = loc or ctx.loc
        self.report(self.diags, message, where, src if src is not None else ctx.src, ctx.via)
        return _Abort()

    def report(
        self,
        into: list[Diagnostic],
        message: str,
        where: Location | None,
        src: str,
        via: tuple[Location, ...],
        same: str | None = None,
    ) -> None:
        """Record an error; the same error met again through other block calls (a mistake inside a
        block used 30 times) is one diagnostic that counts the other calls. ``same``: the message
        with what differs between the calls (a node path) left out."""
        key = (id(into), same or message, where, src)
        seen = self._reported.get(key)
        if seen is not None:
            seen[1] += 1
            return
        self._reported[key] = [len(into), 0, via, message]
        into.append(Diagnostic(message + via_text(via, where), where, src))

    def finish(self) -> None:
        """Add "and N other calls" to errors met through several block calls."""
        for (box, _, where, src), (index, more, via, message) in self._reported.items():
            if more and via:
                into = self.diags if box == id(self.diags) else self.shape_diags
                text = via_text(via, where)[:-1] + f", and {more} other call{'s' if more > 1 else ''})"
                into[index] = Diagnostic(message + text, where, src)

    def origin_note(self, names: Iterable[str], scope: Scope, at: Location | None) -> str:
        """`` (value from vars.num_heads at line 7)`` for the variables a value was computed from."""
        found = list(dict.fromkeys(o for n in names if n != IN for o in scope.origins.get(n, ())))
        if not found:
            return ""
        found.sort(key=lambda o: (o.loc.file, o.loc.line, o.loc.col) if o.loc else ("", 0, 0))
        plural = "s" if len(found) > 1 else ""
        return f" (value{plural} from {', '.join(o.text(at) for o in found)})"

    def expr_names(self, value: Any) -> set[str]:
        return {n for text in expressions_in(value) for n in referenced(text)}

    def evaluate(self, value: Any, scope: Scope, ctx: _Ctx, loc: Location | None, src: str) -> Any:
        """``value`` with its expressions evaluated; an error is located at ``loc`` with its origins."""
        try:
            return substitute(value, scope.vars)
        except UnknownValue:
            raise _Abort() from None  # the item producing $in failed and was reported
        except ExprError as exc:
            note = (
                self.origin_note(self.expr_names(value), scope, loc or ctx.loc)
                if isinstance(exc, ValueProblem)
                else ""
            )
            raise self.error(str(exc) + note, ctx, loc, src) from None

    # ---- entry ------------------------------------------------------------------------------
    def run(self) -> Graph:
        raw = self.doc.raw
        variables, origins = self.eval_vars()
        inputs = self.input_types(variables, origins)
        self.ictx = InferContext(self.nominal_dims(variables, origins))
        self.types = {name: [t] for name, t in inputs.items()}
        root = Scope(dict(variables), origins)
        for name in inputs:
            root.names[name] = (Ref(name), raw["inputs"].key_locs.get(name))
        first = Ref(next(iter(inputs)))
        last: Ref | None = None
        try:
            last = self.seq(
                self.spec.layers, raw["layers"], "", "layers", root, first, (), False, raw.value_loc("layers")
            )
        except _Budget:
            last = None
        outputs = self.outputs(root, last)
        self.finish()
        return Graph(
            self.spec.name,
            inputs,
            self.nodes,
            outputs,
            self.spec.labels,
            dict(self.ictx.dims),
            self.doc.sha256,
            vars=variables,
            ties=self.ties,
        )

    def eval_vars(self) -> tuple[dict[str, Any], dict[str, tuple[Origin, ...]]]:
        values: dict[str, Any] = {}
        origins: dict[str, tuple[Origin, ...]] = {}
        raw_vars = self.doc.raw.get("vars")
        scope = Scope(values, origins)
        for key, value in self.spec.vars.items():
            loc = raw_vars.value_loc(key) if isinstance(raw_vars, LMap) else None
            ctx = _Ctx(f"vars.{key}", loc)
            try:
                values[key] = self.evaluate(value, scope, ctx, loc, f"vars.{key}")
            except _Abort:
                values[key] = UNKNOWN  # what reads it fails silently: one error, not a cascade
            origins[key] = (Origin(self.doc.var_labels.get(key, f"vars.{key}"), loc),)
        return values, origins

    def nominal_dims(
        self, variables: dict[str, Any], origins: dict[str, tuple[Origin, ...]]
    ) -> dict[str, int]:
        """``dims:`` with expressions evaluated: nominal sizes of the symbolic axes."""
        out: dict[str, int] = {}
        scope = Scope(variables, origins)
        for name, value in self.spec.dims.items():
            loc = self.doc.raw["dims"].value_loc(name)
            ctx = _Ctx(f"dims.{name}", loc)
            try:
                size = self.evaluate(value, scope, ctx, loc, ctx.src)
            except _Abort:
                continue
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                note = self.origin_note(self.expr_names(value), scope, loc)
                self.error(f"a nominal size must be a positive int, got {size!r}{note}", ctx)
                continue
            out[name] = size
        return out

    def input_types(
        self, variables: dict[str, Any], origins: dict[str, tuple[Origin, ...]]
    ) -> dict[str, TensorType]:
        """Input types, with ``$expressions`` in shapes evaluated (so scales can set resolution)."""
        out = {}
        scope = Scope(variables, origins)
        for name, spec in self.spec.inputs.items():
            shape_node = self.doc.raw["inputs"][name]["shape"]
            dims: list[int | str] = []
            for i, d in enumerate(spec.shape):
                if is_expr(d):
                    loc = shape_node.value_loc(i)
                    ctx = _Ctx(f"inputs.{name}.shape[{i}]", loc)
                    try:
                        d = self.evaluate(d, scope, ctx, loc, ctx.src)
                    except _Abort:
                        d = 1
                    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                        note = self.origin_note(self.expr_names(spec.shape[i]), scope, loc)
                        self.error(f"an input size must be a positive int, got {d!r}{note}", ctx)
                        d = 1
                dims.append(d)
            out[name] = TensorType(tuple(dims), spec.dtype)
        return out

    def outputs(self, root: Scope, last: Ref | None) -> dict[str, Ref]:
        spec_out = self.spec.outputs
        raw = self.doc.raw
        if spec_out is None:
            return {"output": last} if last and last not in (FAILED, DROPPED) else {}
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
    def view(self, x: Ref | None) -> InputView:
        """``$in`` of a sequence whose input is ``x`` (unknown when the item producing it failed)."""
        types = self.types.get(x.node) if x is not None else None
        if types is None or x is None or x.index >= len(types):
            return InputView(None)
        t = types[x.index]
        return InputView(t.shape, t.dtype)

    def seq(
        self,
        items: list[AnyItem],
        raw: Any,
        prefix: str,
        src: str,
        scope: Scope,
        x: Ref | None,
        via: tuple[Location, ...],
        collapse: bool = True,
        fallback: Location | None = None,
    ) -> Ref | None:
        scope.outputs = []
        scope.incoming = x
        scope.vars[IN] = self.view(x)
        for i, item in enumerate(items):
            self.steps += 1
            raw_item, loc = raw_item_at(raw, i, fallback)
            ctx = _Ctx(f"{src}[{i}]", loc, via)
            if self.steps > MAX_STEPS:
                self.diags.append(
                    Diagnostic(
                        f"the spec expands to more than {MAX_STEPS} items (repeats nested too far?)",
                        loc,
                        ctx.src,
                    )
                )
                raise _Budget()
            single = collapse and len(items) == 1
            try:
                out = self.item(item, raw_item, prefix, None if single else str(i), ctx, scope, x)
            except _Abort:
                out = FAILED
                name = _item_name(item)
                if name is not None and name not in scope.names:  # references to it fail silently
                    scope.names[name] = (FAILED, loc)
            if out is DROPPED:
                continue
            x = out
            if x is not None:
                scope.outputs.append(x)
        return x

    def item(
        self, item: AnyItem, raw: Any, prefix: str, index: str | None, ctx: _Ctx, scope: Scope, x: Ref | None
    ) -> Ref | None:
        if isinstance(item, Invalid):
            raise _Abort()  # reported when parsed
        if item.if_ is not None and not self.condition(item.if_, raw, ctx, scope):
            self.note_dropped(item, raw, ctx, scope)
            return DROPPED
        if isinstance(item, (OpCall, BlockCall)):
            key = item.op if isinstance(item, OpCall) else item.block
            raw_args = raw.get(key) if isinstance(raw, LMap) else None
            loc = raw.value_loc(key) if isinstance(raw, LMap) else ctx.loc
            ctx = _Ctx(f"{ctx.src}.{key}", loc, ctx.via)
            if isinstance(item, BlockCall):
                return self.call_block(self.doc.blocks[key], item, raw_args, prefix, index, ctx, scope, x)
            return self.op_node(OPS[key], item.args, raw_args, prefix, index, ctx, scope, x)
        return self.structural(item, raw, prefix, index, ctx, scope, x)

    def condition(self, cond: bool | str, raw: Any, ctx: _Ctx, scope: Scope) -> bool:
        loc = raw.value_loc("if") if isinstance(raw, LMap) else ctx.loc
        value = self.evaluate(cond, scope, ctx, loc, f"{ctx.src}.if")
        if not isinstance(value, bool):
            note = self.origin_note(self.expr_names(cond), scope, loc)
            raise self.error(f"if: must give true or false, got {value!r}{note}", ctx, loc, f"{ctx.src}.if")
        return value

    def note_dropped(self, item: AnyItem, raw: Any, ctx: _Ctx, scope: Scope) -> None:
        name = _item_name(item)
        if name is not None:
            scope.dropped[name] = ctx.loc

    # ---- ops ----------------------------------------------------------------------------------
    def op_args(
        self, cls: type[Op], value: Any, raw_args: Any, ctx: _Ctx, scope: Scope
    ) -> tuple[dict[str, Any], LMap, dict[str, Any]]:
        """The op's arguments with expressions evaluated, their location table, and as written."""
        if value is None:
            written: dict[str, Any] = {}
            locs = LMap(loc=ctx.loc)
        elif not isinstance(value, dict):
            assert cls.shorthand is not None  # checked when parsed
            written = {cls.shorthand: value}
            locs = LMap(loc=ctx.loc)
            locs.val_locs[cls.shorthand] = ctx.loc  # type: ignore[assignment]
        else:
            written = value
            locs = raw_args if isinstance(raw_args, LMap) else LMap(loc=ctx.loc)
        args: dict[str, Any] = {}
        failed = False
        for k, v in written.items():
            try:
                args[k] = self.evaluate(v, scope, ctx, locs.value_loc(k), f"{ctx.src}.{k}")
            except _Abort:
                failed = True
        if failed:
            raise _Abort()
        return args, locs, written

    def fill_defaults(self, cls: type[Op], args: dict[str, Any]) -> None:
        fills = {**cls.from_defaults, "bias_init": "bias_init"}
        if cls.init_from_defaults:
            fills["init"] = "init"
        for fld, key in fills.items():
            if args.get(fld) is None and self.defaults.get(key) is not None:
                value = self.defaults[key]
                args[fld] = value.model_dump() if isinstance(value, BaseModel) else value

    def make_op(
        self,
        cls: type[Op],
        args: dict[str, Any],
        locs: LMap,
        written: dict[str, Any],
        ctx: _Ctx,
        scope: Scope,
    ) -> Op:
        """Validate the arguments with the op's model (identical arguments share one frozen op)."""
        try:
            key: Any = (cls, _freeze(args))
            cached = self._ops.get(key)
        except TypeError:  # something unhashable: validate without the cache
            key, cached = None, None
        if cached is not None:
            return cached
        op, diags = validate(cls, args, ctx.src, ctx.loc, locs=locs)
        if op is None:
            for d in diags:
                arg = d.path[len(ctx.src) + 1 :].split(".")[0].split("[")[0]
                note = self.origin_note(self.expr_names(written.get(arg)), scope, d.loc)
                self.report(self.diags, d.message + note, d.loc, d.path, ctx.via)
            raise _Abort()
        if key is not None:
            self._ops[key] = op
        return op

    def internal_op(self, name: str, args: dict[str, Any], ctx: _Ctx, scope: Scope) -> Op:
        """An op the lowering adds itself (merge, shortcut, drop path), with the spec's defaults."""
        cls = OPS[name]
        self.fill_defaults(cls, args)
        return self.make_op(cls, args, LMap(loc=ctx.loc), {}, ctx, scope)

    def op_node(
        self,
        cls: type[Op],
        value: Any,
        raw_args: Any,
        prefix: str,
        index: str | None,
        ctx: _Ctx,
        scope: Scope,
        x: Ref | None,
    ) -> Ref:
        key = (cls, id(value))
        fixed = self._fixed.get(key)  # arguments without expressions give the same op every time
        if fixed is not None and fixed[0] is value:
            _, op, src_from, locs, written = fixed
        else:
            args, locs, written = self.op_args(cls, value, raw_args, ctx, scope)
            src_from = args.pop("from", None)
            self.fill_defaults(cls, args)
            op = self.make_op(cls, args, locs, written, ctx, scope)
            if value is None or not expressions_in(value):
                self._fixed[key] = (value, op, src_from, locs, written)
        inputs = self.inputs_for(src_from, locs, cls.min_inputs, cls.op_name, ctx, scope, x)

        def note(message: str) -> str:
            names = [k for k in written if _mentions(message, k)]
            return self.origin_note({n for k in names for n in self.expr_names(written[k])}, scope, ctx.loc)

        ref = self.add_node(op, inputs, prefix, index, op.name, ctx, scope, note)
        for param, owner in op.tied().items():
            tctx = _Ctx(f"{ctx.src}.tie", ctx.loc, ctx.via)
            self.ties.append(Tie(ref.node, param, self.resolve(owner, scope, tctx).node))
        return ref

    def inputs_for(
        self, src_from: Any, locs: LMap, min_inputs: int, what: str, ctx: _Ctx, scope: Scope, x: Ref | None
    ) -> list[Ref]:
        if src_from is None:
            if min_inputs > 1:
                raise self.error(f"{what} needs {min_inputs} or more inputs: give from: [a, b]", ctx)
            if x is None:
                raise self.error("this layer has no input: give it from:", ctx)
            return [x]
        refs = src_from if isinstance(src_from, list) else [src_from]
        where = locs.value_loc("from") if "from" in locs.val_locs else ctx.loc
        fctx = _Ctx(f"{ctx.src}.from", where, ctx.via)
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
        note: Callable[[str], str] | None = None,
    ) -> Ref:
        path = join(prefix, name or index or "") or op.op_name
        self.register_name(name, path, ctx, scope)
        self.check_path(path, ctx)
        if len(self.nodes) >= MAX_NODES:
            self.diags.append(Diagnostic(f"the network has more than {MAX_NODES} nodes", ctx.loc, ctx.src))
            raise _Budget()
        node = Node(path, op, inputs, ctx.loc, ctx.src, ctx.via)
        self.nodes.append(node)
        self.paths[path] = node
        self.infer(node, note)
        return Ref(path)

    def check_path(self, path: str, ctx: _Ctx) -> None:
        """Paths name torch modules (dots nest them): unique, and no node inside another node."""
        if path in self.paths:
            raise self.error(f"node path '{path}' is used twice", ctx)
        if path in self.groups:
            raise self.error(f"node path '{path}' is already a prefix of other nodes' paths", ctx)
        if "." not in path:
            return
        parts = path.split(".")
        prefixes = [".".join(parts[:k]) for k in range(1, len(parts))]
        inside = next((p for p in prefixes if p in self.paths), None)
        if inside is not None:
            raise self.error(f"node path '{path}' would sit inside node '{inside}'", ctx)
        self.groups.update(prefixes)

    def infer(self, node: Node, note: Callable[[str], str] | None) -> None:
        """Infer a new node now (skipped if an input is unknown: that item already failed)."""
        ins = input_types(node, self.types)
        if ins is None:
            return
        message = ins if isinstance(ins, str) else None
        if message is None:
            assert not isinstance(ins, str)
            key = (id(node.op), tuple(ins))
            hit = self._inferred.get(key)
            if hit is not None and hit[0] is node.op:
                node.inferred = hit[1]
            else:
                message = check_node(node, ins, self.ictx)
                if message is None:
                    assert node.inferred is not None
                    self._inferred[key] = (node.op, node.inferred)
        if message is None:
            assert node.inferred is not None
            self.types[node.path] = node.inferred.outputs
            return
        message += note(message) if note else ""
        same = message.replace(f"'{node.path}'", "''")
        self.report(self.shape_diags, message, node.loc, node.src, node.via, same)

    def register_name(self, name: str | None, path: str, ctx: _Ctx, scope: Scope) -> None:
        if name is None:
            return
        reserved = next((p for p in name.split(".") if p in RESERVED_NAMES), None)
        if reserved is not None:
            raise self.error(
                f"'{reserved}' is reserved (it is a torch.nn.Module attribute); choose another name", ctx
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
            dropped = scope.dropped_at(name)
            if dropped is not False:
                line = f" (line {dropped.line})" if isinstance(dropped, Location) else ""
                raise self.error(f"'{name}' is left out by its if:{line}, so nothing can read it", ctx)
            raise self.error(f"unknown reference '{name}'{did_you_mean(name, scope.visible())}", ctx)
        return Ref(found.node, index)

    # ---- blocks -------------------------------------------------------------------------------
    def call_block(
        self,
        block: Block,
        call: BlockCall,
        raw_args: Any,
        prefix: str,
        index: str | None,
        ctx: _Ctx,
        scope: Scope,
        x: Ref | None,
    ) -> Ref | None:
        locs = raw_args if isinstance(raw_args, LMap) else LMap(loc=ctx.loc)
        params, origins = self.bind_params(block, call, locs, ctx, scope)
        name = call.name
        if name is not None and is_expr(name):
            name = self.evaluate(name, scope, ctx, locs.value_loc("name"), f"{ctx.src}.name")
            if not isinstance(name, str) or not name.isidentifier():
                raise self.error(f"name must be an identifier, got {name!r}", ctx, locs.value_loc("name"))
        src_from = self.evaluate(call.from_, scope, ctx, locs.value_loc("from"), f"{ctx.src}.from")
        inputs = self.inputs_for(
            src_from, locs, len(block.definition.inputs), f"block '{block.name}'", ctx, scope, x
        )
        if len(inputs) != len(block.definition.inputs):
            raise self.error(
                f"block '{block.name}' takes inputs {block.definition.inputs}, got {len(inputs)}", ctx
            )
        path = join(prefix, name or index or "")
        inner = Scope({**self.root_vars(scope), IN: self.view(inputs[0]), **params}, origins)
        self.bind_defaults(block, inner, set(params), ctx)
        for input_name, ref in zip(block.definition.inputs, inputs, strict=True):
            inner.names[input_name] = (ref, None)
        via = (*ctx.via, ctx.loc) if ctx.loc else ctx.via
        out = self.seq(
            block.definition.layers,
            block.raw["layers"],
            path,
            f"blocks.{block.name}.layers",
            inner,
            inputs[0],
            via,
            fallback=block.raw.value_loc("layers"),
        )
        if out is not None and name:
            self.register_name(name, out.node, ctx, scope)
        return out

    def root_vars(self, scope: Scope) -> dict[str, Any]:
        while scope.parent is not None:
            scope = scope.parent
        return scope.vars

    def bind_params(
        self, block: Block, call: BlockCall, locs: LMap, ctx: _Ctx, scope: Scope
    ) -> tuple[dict[str, Any], dict[str, tuple[Origin, ...]]]:
        """The call's parameters evaluated in the caller's scope, each with where its value came from."""
        root = scope
        while root.parent is not None:
            root = root.parent
        origins = dict(root.origins)
        values: dict[str, Any] = {}
        failed = False
        for key, written in call.params.items():
            loc = locs.value_loc(key)
            try:
                value = self.evaluate(written, scope, ctx, loc, f"{ctx.src}.{key}")
            except _Abort:
                failed = True
                continue
            names = self.expr_names(written)
            origin = (
                tuple(o for n in names if n != IN for o in scope.origins.get(n, ()))
                if names
                else (Origin(f"{ctx.src}.{key}", loc),)
            )
            message = param_type_problem(block.name, key, block.definition.params[key], value)
            if message:
                note = self.origin_note(names, scope, loc)
                self.error(message + note, ctx, loc)
                failed = True
                continue
            values[key] = value
            origins[key] = origin
        if failed:
            raise _Abort()
        return values, origins

    def bind_defaults(self, block: Block, inner: Scope, given: set[str], ctx: _Ctx) -> None:
        """Unset parameters take their defaults, evaluated in the block's scope (they may read
        earlier parameters and ``$in``)."""
        raw_params = block.raw.get("params")
        for key, decl in block.definition.params.items():
            if key in given:
                continue
            if isinstance(decl, str) and decl in PARAM_TYPES:
                continue  # required; a missing one was reported when parsed
            loc = raw_params.value_loc(key) if isinstance(raw_params, LMap) else ctx.loc
            src = f"blocks.{block.name}.params.{key}"
            inner.vars[key] = self.evaluate(decl, inner, _Ctx(src, loc, ctx.via), loc, src)
            inner.origins[key] = (Origin(src, loc),)

    # ---- structural forms -----------------------------------------------------------------
    def structural(
        self, item: Form, raw: Any, prefix: str, index: str | None, ctx: _Ctx, scope: Scope, x: Ref | None
    ) -> Ref | None:
        kind = item.kind
        ctx = _Ctx(f"{ctx.src}.{kind}", ctx.loc, ctx.via)
        locs = raw if isinstance(raw, LMap) else LMap(loc=ctx.loc)
        if item.from_ is not None:
            refs = self.inputs_for(item.from_, locs, 1, kind, ctx, scope, x)
            if len(refs) != 1:
                raise self.error(
                    f"a {kind} item takes one input, got {len(refs)}", ctx, locs.value_loc("from")
                )
            x = refs[0]
        if x is None:
            raise self.error("this layer has no input", ctx)
        path = join(prefix, item.name or index or "")
        out: Ref | None
        if isinstance(item, Repeat):
            out = self.lower_repeat(item, locs, path, ctx, scope, x)
        elif isinstance(item, Residual):
            out = self.lower_residual(item, locs, path, ctx, scope, x)
        elif isinstance(item, Dense):
            out = self.lower_dense(item, locs, path, ctx, scope, x)
        else:
            out = self.lower_parallel(item, locs, path, ctx, scope, x)
        if out is not None and item.name:
            self.register_name(item.name, out.node, ctx, scope)
        return out

    def field(
        self, item: Form, locs: LMap, key: str, ctx: _Ctx, scope: Scope, check: Callable[[Any], str | None]
    ) -> Any:
        """A structural field's value, its expression evaluated and checked like a literal would be."""
        written = getattr(item, key)
        if not is_expr(written):
            return written
        loc = locs.value_loc(key)
        value = self.evaluate(written, scope, ctx, loc, f"{ctx.src}.{key}")
        problem = check(value)
        if problem:
            note = self.origin_note(self.expr_names(written), scope, loc)
            raise self.error(f"'{key}' {problem}, got {value!r}{note}", ctx, loc, f"{ctx.src}.{key}")
        return value

    def lower_repeat(
        self, item: Repeat, locs: LMap, path: str, ctx: _Ctx, scope: Scope, x: Ref
    ) -> Ref | None:
        count = self.field(item, locs, "repeat", ctx, scope, _int_between(0, MAX_REPEAT))
        body_raw, body_loc = raw_at(locs, ("body",), ctx.loc)
        out: Ref | None = x
        for k in range(count):
            inner = scope.child({item.index: k})
            out = self.seq(
                item.body,
                body_raw,
                join(path, str(k)),
                f"{ctx.src}.body",
                inner,
                out,
                ctx.via,
                fallback=body_loc,
            )
            if out is None or out.node not in self.types:
                return out  # this iteration failed: the next ones could only repeat its errors
        return out

    def lower_residual(
        self, item: Residual, locs: LMap, path: str, ctx: _Ctx, scope: Scope, x: Ref
    ) -> Ref | None:
        body_raw, body_loc = raw_at(locs, ("residual",), ctx.loc)
        body = self.seq(item.residual, body_raw, path, ctx.src, scope.child(), x, ctx.via, False, body_loc)
        if body is None:
            return None
        shortcut = self.field(item, locs, "shortcut", ctx, scope, _word("auto", "identity", "none"))
        sctx = _Ctx(
            f"{ctx.src}.shortcut", locs.value_loc("shortcut") if "shortcut" in locs else ctx.loc, ctx.via
        )
        if shortcut == "none":
            out = body
        else:
            drop = self.field(item, locs, "drop_path", ctx, scope, _probability)
            added = body
            if drop > 0:
                dctx = _Ctx(f"{ctx.src}.drop_path", locs.value_loc("drop_path"), ctx.via)
                drop_op = self.internal_op("drop_path", {"p": drop}, dctx, scope)
                added = self.add_node(drop_op, [body], join(path, "drop_path"), None, None, dctx, scope)
            short = self.shortcut(shortcut, locs, path, sctx, scope, x, body)
            if short is None:
                return None
            add = self.internal_op("add", {}, ctx, scope)
            out = self.add_node(add, [added, short], join(path, "add"), None, None, ctx, scope)
        if item.then is not None:
            then_raw, then_loc = raw_at(locs, ("then",), ctx.loc)
            return self.seq(
                item.then,
                then_raw,
                join(path, "then"),
                f"{ctx.src}.then",
                scope.child(),
                out,
                ctx.via,
                fallback=then_loc,
            )
        return out

    def shortcut(
        self, shortcut: Any, locs: LMap, path: str, sctx: _Ctx, scope: Scope, x: Ref, body: Ref
    ) -> Ref | None:
        if shortcut == "identity":
            return x
        if shortcut == "auto":
            op = self.internal_op("projection", {}, sctx, scope)
            return self.add_node(op, [x, body], join(path, "shortcut"), None, None, sctx, scope)
        short_raw, short_loc = raw_at(locs, ("shortcut",), sctx.loc)
        return self.seq(
            shortcut,
            short_raw,
            join(path, "shortcut"),
            sctx.src,
            scope.child(),
            x,
            sctx.via,
            fallback=short_loc,
        )

    def lower_dense(self, item: Dense, locs: LMap, path: str, ctx: _Ctx, scope: Scope, x: Ref) -> Ref | None:
        count = self.field(item, locs, "num_layers", ctx, scope, _int_between(1, MAX_REPEAT))
        growth = None
        origins = scope.origins
        if item.growth_rate is not None:
            growth = self.field(item, locs, "growth_rate", ctx, scope, _int_between(0, None))
            written = item.growth_rate
            loc = locs.value_loc("growth_rate")
            origins = {
                **scope.origins,
                "growth_rate": tuple(o for n in self.expr_names(written) for o in scope.origins.get(n, ()))
                or (Origin(f"{ctx.src}.growth_rate", loc),),
            }
        extra = {"growth_rate": growth} if growth is not None else {}
        body_raw, body_loc = raw_at(locs, ("dense",), ctx.loc)
        out: Ref = x
        reported = False
        for k in range(count):
            inner = scope.child({item.index: k, **extra}, origins)
            new = self.seq(
                item.dense, body_raw, join(path, str(k)), ctx.src, inner, out, ctx.via, fallback=body_loc
            )
            if new is None:
                return None
            cat = self.internal_op("concat", {"dim": 0}, ctx, scope)
            out = self.add_node(cat, [out, new], join(path, f"cat{k}"), None, None, ctx, scope)
            made = self.types.get(new.node)
            if (
                growth is not None
                and made is not None
                and not reported
                and made[new.index].shape[0] != growth
            ):
                channels = made[new.index].shape[0]
                message = f"dense layer body produces {channels} channels but growth_rate is {growth}"
                self.report(self.shape_diags, message, ctx.loc, ctx.src, ctx.via)
                reported = True
        return out

    def lower_parallel(
        self, item: Parallel, locs: LMap, path: str, ctx: _Ctx, scope: Scope, x: Ref
    ) -> Ref | None:
        merge = self.field(item, locs, "merge", ctx, scope, _word("concat", "add"))
        dim = self.field(item, locs, "dim", ctx, scope, _int_between(None, None))
        outs: list[Ref] = []
        for b, branch in enumerate(item.parallel):
            if not branch:
                outs.append(x)
                continue
            branch_raw, branch_loc = raw_at(locs, ("parallel", b), ctx.loc)
            out = self.seq(
                branch,
                branch_raw,
                join(path, str(b)),
                f"{ctx.src}[{b}]",
                scope.child(),
                x,
                ctx.via,
                fallback=branch_loc,
            )
            if out is None:
                return None
            outs.append(out)
        op = (
            self.internal_op("concat", {"dim": dim}, ctx, scope)
            if merge == "concat"
            else self.internal_op("add", {}, ctx, scope)
        )
        return self.add_node(op, outs, join(path, "merge"), None, None, ctx, scope)


def _item_name(item: AnyItem) -> str | None:
    """The name an item gives its output, when written literally."""
    name = item.args.get("name") if isinstance(item, OpCall) and isinstance(item.args, dict) else None
    name = getattr(item, "name", name)
    return name if isinstance(name, str) and not is_expr(name) else None


def _mentions(message: str, key: str) -> bool:
    """Whether a shape rule's message names argument ``key`` (``num_heads``, or ``num heads``)."""

    words = {key, key.replace("_", " ")}
    head = key.split("_")[0]
    if len(head) >= 4:  # kernel_size is "kernel 9" in a window message
        words.add(head)
    return any(re.search(rf"\b{re.escape(w)}\b", message) for w in words)


def _int_between(low: int | None, high: int | None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer"
        if (low is not None and v < low) or (high is not None and v > high):
            return f"must be between {low} and {high}" if high is not None else f"must be at least {low}"
        return None

    return check


def _word(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be {' or '.join(choices)}"


def _probability(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        return "must be a probability in [0, 1)"
    return None


def lower_collect(doc: SpecDocument) -> Lowered:
    """Lower (and infer) as far as possible: the graph of every item that lowered, and the problems."""
    lowerer = Lowerer(doc)
    graph = lowerer.run()
    graph.document = doc
    return Lowered(graph, lowerer.diags, lowerer.shape_diags)


def lower(doc: SpecDocument) -> Graph:
    """Lower a parsed document to a flat, inferred graph. Raises with every problem found."""
    result = lower_collect(doc)
    problems = doc.problems + result.problems
    if problems:
        raise LowerError(problems + result.shape_problems)
    if result.shape_problems:
        raise ShapeError(result.shape_problems)
    return result.graph
