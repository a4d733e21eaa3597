"""Distributed training through ``torch.distributed`` (torchrun / elastic launch), never a home-made launcher.

A worker started by ``torchrun`` (or by ``specc train --nproc-per-node N``, which calls
``torch.distributed.run``) finds ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment and joins
the process group: gloo on CPU, NCCL on CUDA. Rank 0 alone writes files.

Security: the c10d rendezvous store is an unauthenticated TCP server. Without ``--rdzv-endpoint``
the launcher uses ``127.0.0.1`` (single node); on several nodes, run on a trusted network only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from specc.errors import UsageError


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
    from datetime import timedelta

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    base = dist.TCPStore(  # type: ignore[attr-defined]
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
        is_master=not agent and rank == 0, timeout=timedelta(minutes=10),
    )
    return dist.PrefixStore(f"specc/attempt_{restart_count()}", base)  # type: ignore[attr-defined]


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


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
    else:
        args.append("--local-addr=127.0.0.1")
    return [*args, "-m", "specc.cli", *worker_args]


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(opts: LaunchOptions, worker_args: Sequence[str]) -> int:
    """Run the workers through ``torch.distributed.run`` (elastic); returns the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(launcher_args(opts, worker_args))
    try:
        run(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as exc:
        failures = exc.failures
        first = failures[min(failures)] if failures else None
        code = first.exitcode if first is not None and first.exitcode > 0 else 1
        return int(code)
    return 0
