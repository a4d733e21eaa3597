"""Static training-memory estimate: what one optimizer step holds at its peak (pure Python, no torch).

The estimate walks the typed graph the way a training step runs it (``zero_grad``, forward, loss,
backward, ``optimizer.step()``), holding as live the bytes that torch would hold at each point:

* **always**: parameters (fp32), optimizer state (fp32 copies of every parameter: ``adam``/``adamw``
  two, ``sgd`` one momentum buffer), the batch;
* **forward**: each node's outputs until their last reader has run, plus everything an op keeps
  for backward (:meth:`specc.ops.base.Op.memory`: its input, its output, masks, attention
  probabilities...), plus the temporaries of the node running; under autocast the low-precision
  copies of inputs and weights that ``low`` ops keep;
* **loss**: a cross-entropy over the first output (its fp32 log-probabilities are kept);
* **backward**: in reverse order, the gradient of every edge from its first contribution until its
  producer has run, each node's parameter gradients from then on, the node's temporaries; what a
  node kept is freed once its backward ran;
* **optimizer step**: gradients plus the optimizer's temporaries (CUDA: the ``foreach``
  implementations specc uses allocate one parameter-sized buffer for Adam(W); CPU: the per-tensor
  loops allocate two copies of the largest tensor).

The peak is the largest of these moments (steady state, i.e. a step after the first, when the
optimizer state exists). Not counted: the CUDA context and the allocator's caching and
fragmentation (``torch.cuda.memory_reserved`` above ``max_memory_allocated``), library workspaces
(cuDNN, oneDNN), the data loader. Figures and accuracy: ``docs/training.md``.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from specc.errors import UsageError
from specc.graph.ir import Graph, Node, Ref
from specc.ops.base import MemoryContext, OpMemory, TensorType

Optimizer = Literal["sgd", "adam", "adamw", "none"]
Amp = Literal["none", "bf16", "fp16"]
Device = Literal["cpu", "cuda"]
OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "sgd", "none")
STATE_COPIES = {"adamw": 2, "adam": 2, "sgd": 1, "none": 0}
MAX_BATCH = 1 << 24

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str) -> int:
    """``80GiB``, ``80GB`` (10⁹), ``512MiB``, ``1.5e9`` → bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise UsageError(
            f"cannot read a memory size from {text!r}: use a number with KB/MB/GB or KiB/MiB/GiB"
        )
    value = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"a memory size must be positive, got {text!r}")
    return int(value)


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


@dataclass
class NodeMemory:
    """One node's share: bytes it keeps for backward (at the batch size) and where its data go."""

    path: str
    op: str
    kept_bytes: int
    output_bytes: int


@dataclass
class MemoryEstimate:
    """The estimate for one batch size; every figure in bytes."""

    batch: int
    optimizer: str
    amp: str
    device: str
    params: int
    grads: int
    optimizer_state: int
    inputs: int
    activations: int
    """Everything kept for backward when the forward (and the loss) has run."""
    peak: int
    peak_phase: str
    peak_at: str
    nodes: list[NodeMemory] = field(default_factory=list)

    def to_json(self, nodes: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch": self.batch,
            "optimizer": self.optimizer,
            "amp": self.amp,
            "device": self.device,
            "bytes": {
                "params": self.params,
                "grads": self.grads,
                "optimizer_state": self.optimizer_state,
                "inputs": self.inputs,
                "activations": self.activations,
                "peak": self.peak,
            },
            "peak_phase": self.peak_phase,
            "peak_at": self.peak_at,
        }
        if nodes:
            out["nodes"] = [
                {"path": n.path, "op": n.op, "kept_bytes": n.kept_bytes, "output_bytes": n.output_bytes}
                for n in self.nodes
            ]
        return out


def _check(batch: int, optimizer: str, amp: str, device: str) -> None:
    if batch < 1:
        raise UsageError(f"--batch must be 1 or more, got {batch}")
    if optimizer not in STATE_COPIES:
        raise UsageError(f"unknown optimizer '{optimizer}' (choose {', '.join(OPTIMIZERS)})")
    if amp not in ("none", "bf16", "fp16"):
        raise UsageError(f"unknown amp '{amp}' (choose none, bf16, fp16)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{device}' (choose cuda, cpu)")


def estimate_memory(
    graph: Graph,
    batch: int = 1,
    optimizer: Optimizer | str = "adamw",
    amp: Amp | str = "none",
    device: Device | str = "cuda",
) -> MemoryEstimate:
    """Estimate the memory one training step of ``graph`` needs at ``batch`` (see the module notes)."""
    _check(batch, optimizer, amp, device)
    return _Step(graph, batch, optimizer, amp, device).run()


def largest_batch(
    graph: Graph,
    budget: int,
    optimizer: Optimizer | str = "adamw",
    amp: Amp | str = "none",
    device: Device | str = "cuda",
) -> MemoryEstimate | None:
    """The estimate of the largest batch whose peak fits ``budget`` bytes (``None``: not even 1)."""
    _check(1, optimizer, amp, device)
    low, high = 0, 1
    best: MemoryEstimate | None = None
    while high <= MAX_BATCH:  # doubling, then bisection: the peak grows with the batch
        est = estimate_memory(graph, high, optimizer, amp, device)
        if est.peak > budget:
            break
        low, best, high = high, est, high * 2
    high = min(high, MAX_BATCH + 1)
    while high - low > 1:
        mid = (low + high) // 2
        est = estimate_memory(graph, mid, optimizer, amp, device)
        if est.peak <= budget:
            low, best = mid, est
        else:
            high = mid
    return best


# ------------------------------------------------------------------------------------- the walk

Key = tuple[str, int]


def _key(ref: Ref) -> Key:
    return (ref.node, ref.index)


class _Step:
    """One training step, walked node by node; ``live`` is the byte count torch holds."""

    def __init__(self, graph: Graph, batch: int, optimizer: str, amp: str, device: str) -> None:
        self.graph, self.batch, self.optimizer, self.amp, self.device = graph, batch, optimizer, amp, device
        self.ctx = MemoryContext(dict(graph.dims), device=device, amp=amp)  # type: ignore[arg-type]
        self.params = 4 * graph.params
        self.state = STATE_COPIES[optimizer] * self.params
        self.width: dict[Key, int] = {}  # bytes per element of every edge
        self.storage: dict[Key, Key] = {}  # an edge's memory: its own, or the edge it is a view of
        self.users: dict[Key, list[Key]] = defaultdict(list)  # storage -> edges sharing it
        self.needs_grad: dict[Key, bool] = {}
        self.last_use: dict[Key, int] = defaultdict(lambda: -1)
        self.keepers: dict[Key, int] = defaultdict(int)  # storage -> nodes keeping it for backward
        self.holds: list[list[Key]] = []  # per node: the storages it keeps
        self.live_storage: dict[Key, int] = {}  # activation storages alive, with their bytes
        self.peak, self.peak_phase, self.peak_at = 0, "forward", ""
        self.report: list[NodeMemory] = []

    # ---- bookkeeping ------------------------------------------------------------------------
    def numel(self, t: TensorType) -> int:
        return self.ctx.numel(t.shape) * self.batch

    def observe(self, live: int, phase: str, where: str) -> None:
        if live > self.peak:
            self.peak, self.peak_phase, self.peak_at = live, phase, where

    def edge(self, key: Key, t: TensorType, width: int, storage: Key | None, needs_grad: bool) -> int:
        """Record an edge; returns the bytes of the new memory it needs (0 for a view)."""
        self.width[key] = width
        self.needs_grad[key] = needs_grad
        self.storage[key] = storage or key
        self.users[self.storage[key]].append(key)
        return 0 if storage else self.numel(t) * width

    def free_after_forward(self, storage: Key, step: int) -> bool:
        return self.keepers[storage] == 0 and all(self.last_use[k] <= step for k in self.users[storage])

    def run(self) -> MemoryEstimate:
        g = self.graph
        data = sum(self.edge((n, 0), t, _width(t, 4), None, False) for n, t in g.inputs.items())
        outs = list(g.outputs.values())
        first = g.type_of(outs[0]) if outs else None
        targets = 8 * self.batch * (self.ctx.numel(first.shape[:-1]) if first and first.rank > 1 else 1)
        base = self.params + self.state + data + targets
        for i, node in enumerate(g.nodes):
            for r in node.inputs:
                self.last_use[_key(r)] = i
        for r in outs:
            self.last_use[_key(r)] = len(g.nodes)  # read by the loss
        mems = [self.node_memory(n) for n in g.nodes]
        kept_new, activations = self.forward(base, mems)
        grads = self.backward(mems, kept_new)
        self.optimizer_step(base + grads)
        return MemoryEstimate(
            self.batch,
            self.optimizer,
            self.amp,
            self.device,
            self.params,
            grads,
            self.state,
            data + targets,
            activations,
            self.peak,
            self.peak_phase,
            self.peak_at,
            self.report,
        )

    def node_memory(self, node: Node) -> OpMemory:
        assert node.inferred is not None, f"node {node.path} was not inferred"
        ins = [self.graph.type_of(r) for r in node.inputs]
        return node.op.memory(ins, node.inferred.outputs, self.ctx)

    def op_width(self, node: Node, mem: OpMemory) -> int:
        """Bytes per element of the tensors the op computes (autocast's rules)."""
        if self.amp != "none" and mem.amp == "low":
            return 2
        if self.amp != "none" and mem.amp == "fp32" and self.device == "cuda":
            return 4
        floats = [self.width[_key(r)] for r in node.inputs if self.graph.type_of(r).dtype == "float32"]
        return max(floats, default=4)  # type promotion; an embedding's output is float32

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, base: int, mems: list[OpMemory]) -> tuple[list[int], int]:
        g, n_nodes = self.graph, len(self.graph.nodes)
        kept_new = [0] * n_nodes  # bytes of new tensors each node keeps (released at its backward)
        self.amp_weights = [0] * n_nodes  # low-precision weight copies kept under autocast
        live = base
        for i, node in enumerate(g.nodes):
            assert node.inferred is not None
            mem, w = mems[i], self.op_width(node, mems[i])
            grads_in = bool(node.inferred.param_shapes) or bool(node.op.tied())
            grads_in = grads_in or any(self.needs_grad[_key(r)] for r in node.inputs)
            out_bytes = 0
            for k, t in enumerate(node.inferred.outputs):
                view = mem.view and (k == 0 or mem.view_all) and bool(node.inputs)
                src = self.storage[_key(node.inputs[0])] if view else None
                if mem.param_view and k == 0:
                    src = (node.path, -1)  # the parameter's own memory, counted with the parameters
                width = w if t.dtype == "float32" else _width(t, w)
                new = self.edge((node.path, k), t, width, src, grads_in and t.dtype == "float32")
                if new:
                    self.live_storage[(node.path, k)] = new
                out_bytes += new
            kept_new[i] = self.keep(i, node, mem, w)
            weights, biases = self.amp_casts(node, mem)
            self.amp_weights[i] = weights
            live += out_bytes + kept_new[i] + weights + biases
            self.observe(live + int(mem.workspace * self.batch * w), "forward", node.path)
            self.report.append(NodeMemory(node.path, node.op.op_name, kept_new[i], out_bytes))
            touched = {self.storage[_key(r)] for r in node.inputs}
            touched |= {self.storage[(node.path, k)] for k in range(len(node.inferred.outputs))}
            for s in touched:
                if s in self.live_storage and self.free_after_forward(s, i):
                    live -= self.live_storage.pop(s)
            live -= biases  # bias casts leave autocast's cache with the forward (kept here until then)
        self.loss_kept = 0
        outs = list(g.outputs.values())
        if outs:  # cross-entropy over the first output keeps fp32 log-probabilities
            self.loss_kept = 4 * self.numel(g.type_of(outs[0]))
            cast = self.loss_kept if self.width[_key(outs[0])] != 4 else 0  # out.float()
            live += self.loss_kept
            self.observe(live + cast, "forward", "loss")
        for s in list(self.live_storage):
            if self.free_after_forward(s, n_nodes):
                live -= self.live_storage.pop(s)
        self.after_forward = live
        return kept_new, live - base

    def keep(self, i: int, node: Node, mem: OpMemory, w: int) -> int:
        """Register what node ``i`` keeps; returns the bytes of the new tensors among them (its own
        ``kept``/``kept_bytes``, and autocast's casts of inputs whose dtype differs from the op's)."""
        new = mem.kept * self.batch * w + mem.kept_bytes * self.batch
        holds = []
        for j in mem.keeps_inputs:
            t, key = self.graph.type_of(node.inputs[j]), _key(node.inputs[j])
            if t.dtype == "float32" and self.width[key] != w:
                new += self.numel(t) * w  # the op keeps autocast's copy, not the edge
            else:
                holds.append(self.storage[key])
        holds += [self.storage[(node.path, j)] for j in mem.keeps_outputs]
        for s in holds:
            self.keepers[s] += 1
        self.holds.append(holds)
        return int(new)

    def amp_casts(self, node: Node, mem: OpMemory) -> tuple[int, int]:
        """Autocast's low-precision copies of a ``low`` op's parameters: (weights, kept for
        backward; biases, cached until the forward ends)."""
        if self.amp == "none" or mem.amp != "low" or node.inferred is None:
            return 0, 0
        weights = sum(math.prod(s) for s in node.inferred.param_shapes if len(s) >= 2)
        return 2 * weights, 2 * (node.inferred.params - weights)

    # ---- backward -----------------------------------------------------------------------------
    def backward(self, mems: list[OpMemory], kept_new: list[int]) -> int:
        g = self.graph
        live = self.after_forward
        grad: dict[Key, int] = {}  # gradient buffers by edge, from the first contribution on
        param_grads = 0
        tied_done: dict[str, int] = defaultdict(int)  # owner path -> bytes its tying nodes allocated
        outs = list(g.outputs.values())
        if outs:  # cross-entropy backward: d log-probs, d logits (fp32), cast to the output's dtype
            key0 = _key(outs[0])
            size0 = self.loss_kept // 4 * self.width[key0]
            cast = size0 if self.width[key0] != 4 else 0
            self.observe(live + 2 * self.loss_kept + cast, "backward", "loss")
            live += size0 - self.loss_kept
            grad[key0] = size0
        for i in range(len(g.nodes) - 1, -1, -1):
            node, mem = g.nodes[i], mems[i]
            assert node.inferred is not None
            outs_i = [(node.path, k) for k in range(len(node.inferred.outputs))]
            if not any(k in grad for k in outs_i):
                continue  # no gradient reaches it: its backward never runs
            w = self.op_width(node, mem)
            transient = 0
            for j, r in enumerate(node.inputs):
                key = _key(r)
                if not self.needs_grad[key] or mem.param_view:
                    continue
                size = self.numel(g.type_of(r)) * self.width[key]
                if j == 0 and mem.view and size == grad.get(outs_i[0], -1):
                    moved = grad.pop(outs_i[0])  # a reshape's gradient is a view of its output's
                    if key in grad:
                        transient += moved
                        live -= moved
                    else:
                        grad[key] = moved
                elif key in grad:
                    transient += size  # accumulated into the existing buffer
                else:
                    grad[key] = size
                    live += size
            own = 4 * node.inferred.params - tied_done.pop(node.path, 0)
            transient += 4 * node.inferred.params - own  # a shared weight's second gradient
            for _param, owner in self.ties_of(node.path):
                size = self.owner_weight(owner)
                tied_done[owner] += size
                own += size
            if self.amp != "none" and mem.amp == "low":
                transient += 2 * node.inferred.params  # the low-precision gradient before its cast
            live += own
            param_grads += own
            self.observe(
                live + transient + int(mem.backward_workspace * self.batch * w), "backward", node.path
            )
            for k in outs_i:
                live -= grad.pop(k, 0)
            live -= kept_new[i] + self.amp_weights[i]
            for s in self.holds[i]:
                self.keepers[s] -= 1
                if s in self.live_storage and self.free_after_forward(s, len(g.nodes)):
                    live -= self.live_storage.pop(s)
        return param_grads

    def ties_of(self, path: str) -> list[tuple[str, str]]:
        return [(t.param, t.owner) for t in self.graph.ties if t.node == path]

    def owner_weight(self, owner: str) -> int:
        """Bytes of a tied parameter (the owner's first, e.g. an embedding's table)."""
        inferred = self.graph.node(owner).inferred
        return 4 * math.prod(inferred.param_shapes[0]) if inferred and inferred.param_shapes else 0

    # ---- optimizer ----------------------------------------------------------------------------
    def optimizer_step(self, live: int) -> None:
        self.observe(live, "optimizer", self.optimizer)
        if self.optimizer not in ("adam", "adamw"):
            return  # SGD with momentum updates its buffers in place
        if self.device == "cuda":  # foreach=True (specc on CUDA): sqrt(exp_avg_sq) for every tensor
            extra = self.params
        else:  # per-tensor loop: denom = exp_avg_sq.sqrt() / c, then + eps
            extra = 2 * 4 * max((math.prod(s) for s in self.graph.param_shapes()), default=0)
        self.observe(live + extra, "optimizer", self.optimizer)


def _width(t: TensorType, float_width: int) -> int:
    return {"float32": float_width, "int64": 8, "bool": 1}[t.dtype]


def memory_report(
    graph: Graph | None,
    batch: int,
    optimizer: str,
    amp: str,
    device: str,
    budget: int | None = None,
    top: int = 0,
) -> tuple[dict[str, Any], list[str]]:
    """The estimate (per node too; with ``budget`` the largest batch that fits) as JSON and as text
    lines, ``top`` nodes keeping the most listed. With ``graph=None`` only the options are checked."""
    _check(batch, optimizer, amp, device)
    if graph is None:
        return {}, []
    est = estimate_memory(graph, batch, optimizer, amp, device)
    report, lines = est.to_json(nodes=True), [memory_table(est)]
    if top:
        lines.append(node_memory_table(est, top))
    if budget is not None:
        best = largest_batch(graph, budget, optimizer, amp, device)
        report["fits"] = {
            "budget": budget,
            "batch": best.batch if best else 0,
            "peak": best.peak if best else None,
        }
        found = f"{best.batch} (peak {human_bytes(best.peak)})" if best else "none: batch 1 does not fit"
        lines.append(f"largest batch that fits {human_bytes(budget)}: {found}")
    return report, lines


def node_memory_table(est: MemoryEstimate, top: int) -> str:
    """The ``top`` nodes by the new tensors they keep for backward, with their outputs' size."""
    rows = sorted(est.nodes, key=lambda n: n.kept_bytes, reverse=True)[:top]
    width = max((len(n.path) for n in rows), default=4)
    lines = [f"  {'node':<{width}}  {'op':<20} {'keeps (new)':>12} {'outputs':>12}"]
    lines += [
        f"  {n.path:<{width}}  {n.op:<20} {human_bytes(n.kept_bytes):>12} {human_bytes(n.output_bytes):>12}"
        for n in rows
    ]
    return "\n".join(lines)


def memory_table(est: MemoryEstimate) -> str:
    """The estimate as a short human-readable block."""
    rows = [
        ("parameters", est.params),
        ("gradients", est.grads),
        (f"optimizer state ({est.optimizer})", est.optimizer_state),
        ("batch (inputs, targets)", est.inputs),
        ("activations kept for backward", est.activations),
    ]
    lines = [f"  {name:<32} {human_bytes(value):>12}" for name, value in rows]
    lines.append(
        f"  {'peak during the step':<32} {human_bytes(est.peak):>12}  ({est.peak_phase}, at {est.peak_at})"
    )
    head = f"training memory at batch {est.batch}, {est.optimizer}, amp {est.amp}, {est.device} (estimate):"
    return "\n".join([head, *lines])


__all__: Sequence[str] = [
    "MemoryEstimate",
    "NodeMemory",
    "estimate_memory",
    "human_bytes",
    "largest_batch",
    "memory_report",
    "memory_table",
    "node_memory_table",
    "parse_bytes",
]
