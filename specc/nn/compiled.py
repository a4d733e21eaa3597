"""The compiled network: a typed graph → ``nn.Module`` with a static forward plan.

Module names are the node paths (``layer1.0.conv1`` → ``model.layer1["0"].conv1``), so a
state_dict key, an ONNX node name and a row of ``specc build`` point back at the spec. ``forward``
is a straight loop over a precomputed plan that frees every tensor after its last use: no
data-dependent control flow, so ``torch.compile`` and ONNX export see one clean graph.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules import module as _torch_module
from torch.nn.modules.batchnorm import _NormBase

from specc.api import check, compile_graph
from specc.errors import BuildError, UsageError
from specc.graph import Graph
from specc.graph.budget import check_param_limit
from specc.lang.document import SpecDocument
from specc.ops.base import Inferred, InitSpec, Op, TensorType
from specc.registry import Registry
from specc.weights import write_state


@dataclass(frozen=True)
class Step:
    """One plan step: run ``module`` on slots ``inputs``, write its outputs to slots ``outputs``,
    then drop the tensors in slots ``free`` (no later step reads them)."""

    module: nn.Module
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    free: tuple[int, ...]


class CompiledModel(nn.Module):
    """The compiled network. ``forward(*inputs)`` takes the spec's inputs in order (batched) and
    returns one tensor, or a tuple in the order of the spec's outputs."""

    def __init__(self, graph: Graph, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.spec_name = graph.name
        self.input_names = list(graph.inputs)
        self.output_names = list(graph.outputs)
        slots: dict[tuple[str, int], int] = {(name, 0): i for i, name in enumerate(graph.inputs)}
        types = {(name, 0): t for name, t in graph.inputs.items()}  # each edge's type, as built
        modules: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = []
        next_slot = len(slots)
        target = torch.device(device or "cpu")
        # torch.device(...) as a context routes every torch call through Python: only when needed
        same = target == torch.get_default_device()
        with _gc_paused(), contextlib.nullcontext() if same else target:
            for node in graph.nodes:
                inferred, path, refs = node.inferred, node.path, node.inputs
                assert inferred is not None, f"node {path} was not inferred"
                module = construct(node.op, [types[r.node, r.index] for r in refs], inferred, target)
                outputs = inferred.outputs
                for k, t in enumerate(outputs):
                    types[path, k] = t
                self._attach(path, module)
                in_slots = tuple([slots[r.node, r.index] for r in refs])
                if _may_pass_through(type(module)) and module.passthrough:
                    slots[(path, 0)] = in_slots[0]  # identity: alias the input, no plan step
                    continue
                out_slots = tuple(range(next_slot, next_slot + len(outputs)))
                for k, slot in enumerate(out_slots):
                    slots[(path, k)] = slot
                next_slot += len(out_slots)
                modules.append((module, in_slots, out_slots))
        for tie in graph.ties:
            self._tie(tie.node, tie.param, tie.owner)
        self._num_slots = next_slot
        self._result = tuple(slots[(r.node, r.index)] for r in graph.outputs.values())
        self._plan = _plan(modules, self._result)

    def _attach(self, path: str, module: nn.Module) -> None:
        if "." not in path:  # a top-level node: most of them
            _add_module(self, path, module)
            return
        parent: nn.Module = self
        *heads, leaf = path.split(".")
        for part in heads:
            child = parent._modules.get(part)
            if child is None:
                child = nn.ModuleDict()
                _add_module(parent, part, child)
            parent = child
        _add_module(parent, leaf, module)

    def _tie(self, path: str, param: str, owner: str) -> None:
        """Make node ``path`` use node ``owner``'s parameter ``param`` (weight tying)."""
        shared = getattr(self.get_submodule(owner), param, None)
        module = self.get_submodule(path)
        own = getattr(module, param, None)
        if not isinstance(shared, nn.Parameter) or not isinstance(own, nn.Parameter):
            holder = owner if not isinstance(shared, nn.Parameter) else path
            raise BuildError(
                f"{path}: cannot tie '{param}' to node '{owner}': '{holder}' has no parameter '{param}'"
            )
        if own.shape != shared.shape:
            raise BuildError(
                f"{path}: cannot tie '{param}' of shape {tuple(own.shape)} to '{owner}.{param}' "
                f"of shape {tuple(shared.shape)}"
            )
        setattr(module, param, shared)

    @property
    def plan(self) -> list[Step]:
        """The forward plan (a copy): one step per node that computes something, in graph order."""
        return list(self._plan)

    @property
    def num_slots(self) -> int:
        """Size of the forward plan's tensor environment (inputs first, in order)."""
        return self._num_slots

    @property
    def result_slots(self) -> tuple[int, ...]:
        """The environment slots of the outputs, in the spec's order."""
        return self._result

    def replace_module(self, path: str, new: nn.Module) -> nn.Module:
        """Put ``new`` where the submodule at ``path`` is (a node's module, or a module inside one), in
        the module tree and in the forward plan; returns the module it replaced.

        For wrappers that must change modules after building (synchronised BatchNorm, FSDP units):
        ``forward`` calls the plan's modules directly, so swapping a child with ``add_module`` alone
        would leave ``forward`` running the old one.
        """
        old = self.get_submodule(path)
        parent_path, _, leaf = path.rpartition(".")
        parent = self.get_submodule(parent_path) if parent_path else self
        parent.add_module(leaf, new)
        self._plan = [replace(st, module=new) if st.module is old else st for st in self._plan]
        return old

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        env: list[Any] = list(inputs) + [None] * (self._num_slots - len(inputs))
        for step in self._plan:
            out = step.module(*[env[i] for i in step.inputs])
            if len(step.outputs) == 1:
                env[step.outputs[0]] = out
            else:
                for slot, value in zip(step.outputs, out, strict=True):
                    env[slot] = value
            for i in step.free:
                env[i] = None
        if len(self._result) == 1:
            return env[self._result[0]]  # type: ignore[no-any-return]
        return tuple(env[i] for i in self._result)


def _add_module(parent: nn.Module, name: str, module: nn.Module) -> None:
    """``parent.add_module(name, module)`` for a new, free name without its ``hasattr`` probe (an
    exception inside ``Module.__getattr__`` per module: a tenth of a large build). Anything else (a
    name taken by an attribute, registration hooks) goes through ``add_module`` and its checks."""
    free = not (
        name in parent.__dict__
        or name in _class_names(type(parent))
        or name in parent._parameters
        or name in parent._buffers
        or name in parent._modules
    )
    if free and name and "." not in name and not _torch_module._global_module_registration_hooks:
        parent._modules[name] = module
    else:
        parent.add_module(name, module)


_CLASS_NAMES: dict[type, frozenset[str]] = {}
_PASSTHROUGH: dict[type, bool] = {}


def _class_names(cls: type) -> frozenset[str]:
    """The attribute names of a module class (its MRO's): what ``hasattr(cls, name)`` looks up,
    as a set, because a missing name costs ``hasattr`` an exception (a tenth of a large build).
    Module classes are not changed after their definition."""
    names = _CLASS_NAMES.get(cls)
    if names is None:
        names = _CLASS_NAMES[cls] = frozenset(name for klass in cls.__mro__ for name in vars(klass))
    return names


def _may_pass_through(cls: type) -> bool:
    """Whether modules of ``cls`` have a ``passthrough`` property (identity nodes the plan skips)."""
    found = _PASSTHROUGH.get(cls)
    if found is None:
        found = _PASSTHROUGH[cls] = getattr(cls, "passthrough", None) is not None
    return found


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while the modules are created.

    Building allocates only objects that live as long as the model; each full collection the
    allocations trigger walks every object alive (the graph, earlier modules) again, which made a
    10,000-layer build superlinear. The collector runs again as usual afterwards.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _plan(
    modules: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]], keep: tuple[int, ...]
) -> list[Step]:
    last_use: dict[int, int] = {}
    for t, (_, ins, _) in enumerate(modules):
        for slot in ins:
            last_use[slot] = t
    kept = set(keep)
    steps = []
    for t, (module, ins, outs) in enumerate(modules):
        if len(ins) == 1:  # most nodes: no set to build
            slot = ins[0]
            free: tuple[int, ...] = (slot,) if last_use[slot] == t and slot not in kept else ()
        else:
            free = tuple(sorted({s for s in ins if last_use[s] == t} - kept))
        steps.append(Step(module, ins, outs, free))
    return steps


def sets_init(spec: str | InitSpec | None) -> bool:
    """Whether an ``init``/``bias_init`` value asks for something other than torch's default."""
    if spec is None or spec == "default":
        return False
    return not (isinstance(spec, InitSpec) and spec.kind == "default")


def param_init(name: str, param: torch.Tensor, op: Op) -> str | InitSpec | None:
    """The spec init of a module parameter, ``None`` (the module's own start) wherever the spec keeps
    the default.

    ``init`` sets the ``weight`` tensors of rank >= 2 (kernels, matrices, tables), and every ``weight``
    of ops with ``init_any_rank`` (``parameter``, ``scale``: only their own ``init``, never
    ``defaults.init``, and never a fan-based kind; both checked when the spec is lowered); norm scales
    (1-d weights of other ops) keep torch's ones; ``bias_init`` sets the ``bias`` tensors.
    """
    leaf = name.rsplit(".", 1)[-1]
    any_rank = type(op).init_any_rank
    if "weight" in leaf and (any_rank or param.dim() >= 2):
        spec = op.init
    elif "bias" in leaf:
        spec = op.bias_init
    else:
        return None
    return spec if sets_init(spec) else None


def construct(op: Op, inputs: list[TensorType], inferred: Inferred, device: torch.device) -> nn.Module:
    """Build an op's module with every parameter initialised once.

    Where the spec leaves the initialisation to torch (``init: default``), the module is built as
    it always was, so the random draws are torch's own in torch's order. Where the spec sets an
    init, the module is built on the meta device (no memory, no draws), materialised with
    ``to_empty``, and then each parameter gets either torch's default (the owning module's
    ``reset_parameters``, run with the spec-initialised parameters held out) or the spec's init,
    never both. Tied parameters (replaced by another node's) get neither. A module this cannot
    handle (buffers computed by its constructor other than a batch norm's running statistics, no
    ``reset_parameters``) is built as before and its spec-initialised parameters drawn again.
    """
    if device.type == "meta" or not (sets_init(op.init) or sets_init(op.bias_init)):
        return op.build(inputs, inferred)
    if not inferred.param_shapes and not op.tied():
        return op.build(inputs, inferred)  # nothing to initialise
    with torch.device("meta"):
        module = op.build(inputs, inferred)
    by_spec = {n: s for n, p in module.named_parameters() if (s := param_init(n, p, op)) is not None}
    resets = _default_resets(module, set(by_spec))
    if resets is None:
        module = op.build(inputs, inferred)
        _init_params(module, op, skip=set())
        return module
    module.to_empty(device=device)
    for sub, held in resets:
        with _held_out(sub, held):
            sub.reset_parameters()  # type: ignore[operator]
    _init_params(module, op, skip=set(op.tied()))
    return module


def _default_resets(module: nn.Module, by_spec: set[str]) -> list[tuple[nn.Module, list[str]]] | None:
    """The sub-modules whose own parameters keep (some of) torch's default init, with the names of
    their parameters the spec sets instead; ``None`` when a default cannot be re-created.

    Buffers are re-created only for torch's batch/instance norms, whose ``reset_parameters`` also
    resets the running statistics; any other module with buffers is built as before.
    """
    out = []
    for prefix, sub in module.named_modules():
        own = [n for n, p in sub._parameters.items() if p is not None]
        held = [n for n in own if (f"{prefix}.{n}" if prefix else n) in by_spec]
        has_buffers = any(b is not None for b in sub._buffers.values())
        if has_buffers and not isinstance(sub, _NormBase):
            return None
        if len(held) == len(own) and not has_buffers:
            continue
        if not callable(getattr(sub, "reset_parameters", None)):
            return None
        out.append((sub, held))
    return out


@contextlib.contextmanager
def _held_out(module: nn.Module, names: list[str]) -> Iterator[None]:
    """Swap parameters ``names`` of ``module`` for meta tensors, so its ``reset_parameters`` skips
    them (an init function on a meta tensor computes nothing and draws no random numbers)."""
    kept = {n: module._parameters[n] for n in names}
    for n, p in kept.items():
        assert p is not None
        module._parameters[n] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    try:
        yield
    finally:
        module._parameters.update(kept)


def _init_params(module: nn.Module, op: Op, skip: set[str]) -> None:
    """Apply the spec's init to the module's parameters it covers (names in ``skip`` excepted)."""
    for name, param in module.named_parameters():
        spec = param_init(name, param, op)
        if spec is None or name in skip:
            continue
        _init_tensor(param, spec)
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        if isinstance(owner, nn.Embedding) and owner.padding_idx is not None:
            with torch.no_grad():  # as nn.Embedding's own init: the padding vector starts at zero
                param[owner.padding_idx].zero_()


def apply_init(model: CompiledModel, seed: int | None = None) -> None:
    """Re-draw every parameter the spec initialises (``init``/``bias_init`` other than ``default``).

    :class:`CompiledModel` already initialises each parameter once while it is built; this draws
    the spec-initialised ones again (e.g. with another ``seed``). A tied (shared) parameter is
    initialised once, by the first node in graph order that holds it.
    """
    if seed is not None:
        torch.manual_seed(seed)
    seen: set[int] = set()
    for node in model.graph.nodes:
        module = model.get_submodule(node.path)
        shared = {n for n, p in module.named_parameters() if id(p) in seen}
        seen.update(id(p) for p in module.parameters())
        if sets_init(node.op.init) or sets_init(node.op.bias_init):
            _init_params(module, node.op, skip=shared)


def _init_tensor(t: torch.Tensor, spec: str | InitSpec | None) -> None:
    if spec is None or spec == "default":
        return
    s = InitSpec(kind=spec) if isinstance(spec, str) else spec  # type: ignore[arg-type]
    with torch.no_grad():
        INITS[s.kind](t, s)


InitFn = Callable[[torch.Tensor, InitSpec], object]
INITS: Registry[InitFn] = Registry("init kind")
"""``init``/``bias_init`` kinds (the names :data:`specc.ops.base.InitName` lets a spec write) → the
function filling a tensor in place, under ``torch.no_grad()``."""


def _fan_based_init(fn: InitFn) -> InitFn:
    """Fan-based inits need a matrix; a bias (1-d) gets a small uniform instead."""

    def init(t: torch.Tensor, s: InitSpec) -> None:
        if t.dim() < 2:
            bound = 1 / math.sqrt(max(1, t.numel()))
            t.uniform_(-bound, bound)
        else:
            fn(t, s)

    return init


def _constant(t: torch.Tensor, s: InitSpec) -> None:
    assert s.value is not None  # the model validator requires it
    t.fill_(s.value)


INITS.register("default", lambda t, s: None)
INITS.register("zeros", lambda t, s: t.zero_())
INITS.register("ones", lambda t, s: t.fill_(1.0))
INITS.register("constant", _constant)
INITS.register("normal", lambda t, s: t.normal_(s.mean, s.std))
INITS.register(
    "trunc_normal",
    lambda t, s: nn.init.trunc_normal_(t, s.mean, s.std, a=s.mean - 2 * s.std, b=s.mean + 2 * s.std),
)
INITS.register("xavier_uniform", _fan_based_init(lambda t, s: nn.init.xavier_uniform_(t, gain=s.gain)))
INITS.register("xavier_normal", _fan_based_init(lambda t, s: nn.init.xavier_normal_(t, gain=s.gain)))
INITS.register(
    "kaiming_uniform",
    _fan_based_init(lambda t, s: nn.init.kaiming_uniform_(t, mode=s.mode, nonlinearity=s.nonlinearity)),
)
INITS.register(
    "kaiming_normal",
    _fan_based_init(lambda t, s: nn.init.kaiming_normal_(t, mode=s.mode, nonlinearity=s.nonlinearity)),
)


def build(
    spec: Any,
    *,
    sets: tuple[str, ...] = (),
    scale: str | None = None,
    seed: int | None = 0,
    max_params: int | None = None,
    device: str | None = None,
) -> CompiledModel:
    """Compile a spec path, :class:`~specc.lang.SpecDocument` or inferred :class:`Graph` to a module.

    ``seed`` makes the initial weights reproducible without touching the caller's global random
    state (``torch.random.fork_rng``); ``seed=None`` draws from the global state instead.
    """
    if isinstance(spec, Graph):
        graph = spec
    elif isinstance(spec, SpecDocument):
        graph = compile_graph(spec)
    else:
        graph = check(Path(spec), sets, scale)
    check_param_limit(graph, max_params)
    # The caller's global RNG is left alone: initialisation draws from a forked state seeded by `seed`
    # (None: from the global state, which then advances as torch's own constructors would advance it).
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = CompiledModel(graph, device=device)
        except (MemoryError, RuntimeError) as exc:  # torch's allocator failing is a RuntimeError
            if not isinstance(exc, MemoryError) and "alloc" not in str(exc):
                raise
            gib = graph.params * 4 / 2**30
            raise BuildError(
                f"{graph.name}: cannot allocate {graph.params:,} parameters (~{gib:,.1f} GiB in fp32) on "
                "this machine; lower --max-params to refuse such specs before allocating"
            ) from None
    return model


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the state_dict as safetensors, atomically (tied tensors are stored once, see
    :func:`specc.weights.write_state`); ``metadata`` goes into the header next to ``format``."""
    try:
        return write_state(path, model, metadata)
    except Exception as exc:  # noqa: BLE001 - OSError or safetensors' own I/O error (not an OSError)
        if not isinstance(exc, OSError) and type(exc).__name__ != "SafetensorError":
            raise
        raise UsageError(f"cannot write {path}: {exc}") from None
