"""Distributed training through ``torch.distributed`` (torchrun / elastic launch), never a home-made launcher.

A worker started by ``torchrun`` (or by ``specc train --nproc-per-node N``, which calls
``torch.distributed.run``) finds ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment and joins
the process group: gloo on CPU, NCCL on CUDA. Rank 0 alone writes files.

Security: the c10d rendezvous store is an unauthenticated TCP server. Without ``--rdzv-endpoint``
the launcher uses ``127.0.0.1`` (single node); on several nodes, run on a trusted network only.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from specc.errors import UsageError
from specc.nn import CompiledModel
from specc.weights import complete_ties, read_state


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def in_launcher_env() -> bool:
    """True in a worker started by torchrun / torch.distributed.run."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def init(device_kind: str) -> Dist:
    """Join the process group when started by a launcher; pick the backend from the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not in_launcher_env():
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, store=_store(rank, world), rank=rank, world_size=world)
    return Dist(rank, world, local_rank)


def _store(rank: int, world: int) -> Any:
    """The launcher's TCP store under a prefix per restart: keys of a failed attempt (e.g. a killed
    worker's gloo address) must not be read by the restarted workers."""

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    base = dist.TCPStore(  # type: ignore[attr-defined]
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent and rank == 0,
        timeout=timedelta(minutes=10),
    )
    return dist.PrefixStore(f"specc/attempt_{restart_count()}", base)  # type: ignore[attr-defined]


def shutdown(d: Dist) -> None:
    """Leave the group together: without the barrier a rank can tear down gloo while a peer is still
    sending, and that peer aborts at exit ("terminate called without an active exception")."""
    if d.enabled and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


# ------------------------------------------------------------------------------ synchronised BatchNorm


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole global batch, over every process
    of the group, on any backend (gloo on CPU too; torch's ``SyncBatchNorm`` is CUDA-only).

    Each forward all-reduces one float64 vector (per-channel sums, sums of squares, count) with the
    autograd-aware ``torch.distributed.nn.functional.all_reduce``, whose backward all-reduces the
    gradients of the statistics, so forward and backward equal one process's BatchNorm over the
    whole batch up to rounding. Evaluation (and a single process) uses plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-d input (N, C, ...), got {input.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xd = x.double()
        count = torch.full((1,), x.numel() / max(c, 1), dtype=torch.float64, device=x.device)
        stats: torch.Tensor = all_reduce(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))  # type: ignore[no-untyped-call]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        self._track(mean.detach(), var.detach(), float(n.item()))
        shape = [1, c] + [1] * (x.dim() - 2)
        inv = torch.rsqrt(var + self.eps).to(x.dtype).reshape(shape)
        y = (x - mean.to(x.dtype).reshape(shape)) * inv
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        out: torch.Tensor = y
        return out

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked.item())
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)


def to_sync_batchnorm(module: nn.modules.batchnorm._BatchNorm, cuda: bool) -> nn.Module:
    """The synchronised twin of a BatchNorm layer (same parameters and buffers): torch's
    ``SyncBatchNorm`` on CUDA (NCCL), :class:`GroupBatchNorm` elsewhere."""
    if cuda:
        synced: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # type: ignore[no-untyped-call]
        return synced
    new = GroupBatchNorm(
        module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
    )
    new.load_state_dict(module.state_dict())
    new.train(module.training)
    return new


# ------------------------------------------------------------------------------ FSDP2


def fsdp_units(model: nn.Module) -> list[list[nn.Module]]:
    """The modules to ``fully_shard`` together: one group per block of ``model``.

    The blocks are the root's children that hold parameters; a child that is a mere container of
    containers (a spec's ``repeat`` of multi-node bodies) is split into its children, so each
    repeat iteration is a block. For a CompiledModel, whose forward calls the
    nodes of its plan directly (a container's forward never runs), a block's group is the plan's
    modules inside it, sharded together (``fully_shard`` of a list: the first one's pre-forward
    gathers the group). A block whose parameters are shared with another block or the root
    (weight tying across blocks), or that holds parameters no planned module reaches, is left to
    the root's group.
    """
    plan = model.plan if isinstance(model, CompiledModel) else None
    called = list(dict.fromkeys(st.module for st in plan)) if plan is not None else None
    called_ids = {id(m) for m in called or ()}

    def holds(m: nn.Module) -> bool:
        return any(True for _ in m.parameters())

    def blocks(m: nn.Module) -> list[nn.Module]:
        kids = [c for c in m.children() if holds(c)]
        if (
            called is not None
            and id(m) not in called_ids
            and kids
            and not any(id(k) in called_ids for k in kids)
        ):
            return kids  # a repeat: one block per iteration
        return [m]

    candidates = [b for c in model.children() if holds(c) for b in blocks(c)]
    owners: dict[int, int] = {id(p): 1 for p in model.parameters(recurse=False)}
    for block in candidates:
        for p in block.parameters():
            owners[id(p)] = owners.get(id(p), 0) + 1
    units: list[list[nn.Module]] = []
    for block in candidates:
        ids = {id(p) for p in block.parameters()}
        if any(owners[i] > 1 for i in ids):
            continue
        if called is None:
            units.append([block])
            continue
        inside = {id(m) for m in block.modules()}
        group = [m for m in called if id(m) in inside and holds(m)]
        if {id(p) for m in group for p in m.parameters()} == ids:
            units.append(group)
    return units


def fsdp_shard(model: nn.Module, device: torch.device) -> int:
    """``fully_shard`` each unit of :func:`fsdp_units`, then the root (in place); returns the unit count.

    Parameters become ``DTensor`` shards on ``device`` (the full model need not fit there first);
    build the optimizer afterwards.
    """
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = fsdp_units(model)
    for group in units:
        fully_shard(group[0] if len(group) == 1 else group, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(units)


def load_full_state(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file written by ``save_weights`` as a full state dict of ``model``: tied tensors,
    stored once, come back under each of their names (as ``state_dict()`` gives them)."""
    return complete_ties(model, read_state(path)[0])


def fsdp_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on rank 0's CPU, empty on other ranks; a collective (all ranks call).

    Tied parameters come back as one tensor under each name, as ``state_dict()`` gives them.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full: dict[str, Any] = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if full:
        first: dict[int, str] = {}
        for name, t in model.state_dict(keep_vars=True).items():
            key = first.setdefault(id(t), name)
            if key != name and key in full:
                full[name] = full[key]
    return full


def fsdp_optim_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state (parameter names as keys) on rank 0's CPU, empty elsewhere; a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return dict(
        get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    )


def fsdp_load_optim_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state (every rank holds it) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def optim_state_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``optimizer.state_dict()`` (parameter indices) → parameter names (the FSDP checkpoint form)."""
    if _keyed_by_name(state):
        return state
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def optim_state_by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The name-keyed form → what ``optimizer.load_state_dict`` takes (``names``: the optimizer's order)."""
    if not _keyed_by_name(state):
        return state
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def _keyed_by_name(state: dict[str, Any]) -> bool:
    return any(isinstance(p, str) for g in state.get("param_groups", ()) for p in g["params"])


@dataclass(frozen=True)
class LaunchOptions:
    """The launcher's options (``torchrun`` names)."""

    nproc_per_node: int
    nnodes: str = "1"
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    max_restarts: int = 0
    rdzv_id: str = "specc"


def launcher_args(opts: LaunchOptions, worker_args: Sequence[str]) -> list[str]:
    """Arguments of ``torch.distributed.run`` that start ``python -m specc.cli WORKER_ARGS`` per process."""
    if opts.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, got {opts.nproc_per_node}")
    _check_launch_numbers(opts)
    single = opts.nnodes in ("1", "1:1") and opts.rdzv_endpoint is None
    endpoint = opts.rdzv_endpoint or f"127.0.0.1:{_free_port()}"
    if not single and opts.rdzv_endpoint is None:
        raise UsageError("several nodes need --rdzv-endpoint HOST:PORT (the same on every node)")
    args = [
        f"--nproc-per-node={opts.nproc_per_node}",
        f"--nnodes={opts.nnodes}",
        f"--max-restarts={opts.max_restarts}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={opts.rdzv_id}",
    ]
    if not single:
        args.append(f"--node-rank={opts.node_rank}")
    if single or endpoint.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "localhost", "::1"):
        args.append("--local-addr=127.0.0.1")  # every node on this machine (e.g. a simulated 2-node run)
    return [*args, "-m", "specc.cli", *worker_args]


def _check_launch_numbers(opts: LaunchOptions) -> None:
    """Node counts, ranks and the endpoint's port are checked here, before anything starts."""
    if opts.node_rank < 0 or opts.max_restarts < 0:
        raise UsageError("--node-rank and --max-restarts must be 0 or more")
    parts = opts.nnodes.split(":")
    if len(parts) > 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise UsageError(f"--nnodes must be a number of nodes or MIN:MAX, got {opts.nnodes!r}")
    if opts.rdzv_endpoint is not None:
        host, _, port = opts.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UsageError(
                f"--rdzv-endpoint must be HOST:PORT with a port 1-65535, got {opts.rdzv_endpoint!r}"
            )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(opts: LaunchOptions, worker_args: Sequence[str]) -> int:
    """Run the workers through ``torch.distributed.run`` (elastic); returns the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(launcher_args(opts, worker_args))
    try:
        run(args)  # type: ignore[no-untyped-call]
    except SignalException as exc:  # the launcher was signalled: it passed the signal on, workers saved
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        failures = exc.failures
        first = failures[min(failures)] if failures else None
        code = first.exitcode if first is not None and first.exitcode > 0 else 1
        return int(code)
    return 0
