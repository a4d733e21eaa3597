"""``specc train``: parse options, then call :func:`specc.train.runner.train` (or the launcher)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specc.cli.app import app
from specc.cli.spec_cmds import (
    IncludeRootOpt,
    MaxParamsOpt,
    ScaleOpt,
    SetOpt,
    use_include_roots,
    use_max_params,
)
from specc.errors import UsageError

Opt = typer.Option


@app.command()
def train(
    out: Annotated[Path, Opt("--out", help="run folder (checkpoints, metrics, final weights)")],
    spec: Annotated[Path | None, typer.Argument(help="spec file (not with --from)")] = None,  # noqa: UP045
    data: Annotated[
        str | None,
        Opt(
            "--data",
            help="a named set (digits, iris, text:stdlib, copy, ...: an unknown name lists them all), "
            "text:PATH, or a .npz/.npy/.csv/.parquet/.txt/.tar file, an image folder or a folder of tar shards",
        ),
    ] = None,  # noqa: UP045
    sets: SetOpt = None,
    scale: ScaleOpt = None,
    label: Annotated[
        str | None,
        Opt("--label", help="label column of a .csv/.parquet table (default: label, target, y or the last)"),
    ] = None,  # noqa: UP045
    config: Annotated[
        Path | None, Opt("--config", help="training config YAML (instead of the spec's train:)")
    ] = None,  # noqa: UP045
    resume: Annotated[
        bool, Opt("--resume", help="continue from the newest valid checkpoint in --out")
    ] = False,
    init_from: Annotated[
        Path | None, Opt("--init-from", help="weights (.safetensors or run folder) to start from")
    ] = None,  # noqa: UP045
    freeze: Annotated[
        list[str] | None, Opt("--freeze", help="glob of parameter names not to train (repeatable)")
    ] = None,  # noqa: UP045
    init_strict: Annotated[
        bool,
        Opt(
            "--init-strict/--no-init-strict",
            help="every --init-from tensor must fit (default); --no-init-strict keeps the spec's init "
            "where shapes differ or tensors are absent (a new head) and lists them",
        ),
    ] = True,
    init_map: Annotated[
        str | None, Opt("--init-map", help="name map of --init-from (see `specc weights import --help`)")
    ] = None,  # noqa: UP045
    update_frozen_norms: Annotated[
        bool,
        Opt("--update-frozen-norms", help="let frozen BatchNorm layers update their running statistics"),
    ] = False,
    device: Annotated[str, Opt("--device", help="auto, cpu or cuda")] = "auto",
    quiet: Annotated[bool, Opt("--quiet", help="plain log lines instead of progress bars")] = False,
    nproc_per_node: Annotated[
        int | None, Opt("--nproc-per-node", help="processes on this node (torch.distributed.run)")
    ] = None,  # noqa: UP045
    nnodes: Annotated[str, Opt("--nnodes", help="number of nodes, or MIN:MAX (elastic)")] = "1",
    node_rank: Annotated[int, Opt("--node-rank", help="this node's rank (multi-node)")] = 0,
    rdzv_endpoint: Annotated[
        str | None, Opt("--rdzv-endpoint", help="HOST:PORT of the rendezvous (default 127.0.0.1)")
    ] = None,  # noqa: UP045
    max_restarts: Annotated[
        int, Opt("--max-restarts", help="restart failed workers this often (they resume)")
    ] = 0,
    fsdp: Annotated[
        bool,
        Opt(
            "--fsdp",
            help="shard the model over the processes (FSDP2) instead of DDP; the same as train: {fsdp: true}",
        ),
    ] = False,
    include_root: IncludeRootOpt = None,
    from_run: Annotated[
        Path | None,
        Opt(
            "--from",
            help="repeat a run: its resolved spec, training config, data (and split options), "
            "--init-from, --freeze (with their --init-strict/--init-map/--update-frozen-norms) and thread "
            "counts (bit-identical on CPU); --set still applies",
        ),
    ] = None,  # noqa: UP045
    max_params: MaxParamsOpt = None,
    epochs: Annotated[int | None, Opt("--epochs", help="shortcut for --set train.epochs=N")] = None,  # noqa: UP045
    lr: Annotated[float | None, Opt("--lr", help="shortcut for --set train.lr=X")] = None,  # noqa: UP045
    batch_size: Annotated[
        int | None,
        Opt("--batch-size", help="shortcut for --set train.batch_size=N"),
    ] = None,  # noqa: UP045
) -> None:
    """Train a spec on a data set into a run folder (Ctrl-C/SIGTERM saves a checkpoint; --resume continues)."""
    from specc.train import distributed

    use_include_roots(include_root)
    use_max_params(max_params)
    shortcuts = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    sets = [*(sets or ()), *(f"train.{k}={v!r}" for k, v in shortcuts.items() if v is not None)]
    spec_path, data_source = _what_to_train(spec, data, config, from_run)
    worker = _worker_args(
        spec_path, data_source, out, sets, scale, config, resume, init_from, freeze, device, quiet
    )
    worker += ["--fsdp"] if fsdp else []
    worker += ["--label", label] if label is not None else []
    worker += [] if init_strict else ["--no-init-strict"]
    worker += ["--init-map", init_map] if init_map is not None else []
    worker += ["--update-frozen-norms"] if update_frozen_norms else []
    worker += [arg for root in include_root or () for arg in ("--include-root", str(root))]
    worker += ["--from", str(from_run)] if from_run is not None else []
    worker += ["--max-params", str(max_params)] if max_params is not None else []
    if nproc_per_node is not None and not distributed.in_launcher_env():
        opts = distributed.LaunchOptions(nproc_per_node, nnodes, node_rank, rdzv_endpoint, max_restarts)
        code = distributed.launch(opts, worker)
        raise typer.Exit(code)
    from specc.train.runner import TrainRequest
    from specc.train.runner import train as run_train

    outcome = run_train(
        TrainRequest(
            spec_path or Path(),
            data_source or "",
            out,
            tuple(sets or ()),
            scale,
            config,
            resume,
            init_from,
            tuple(freeze or ()),
            device,
            quiet,
            fsdp,
            label,
            from_run,
            init_strict,
            init_map,
            update_frozen_norms,
        )
    )
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def _what_to_train(
    spec: Path | None, data: str | None, config: Path | None, from_run: Path | None
) -> tuple[Path | None, str | None]:
    """SPEC and --data, or --from RUN instead of them (and of --config)."""

    if from_run is not None:
        if spec is not None or data is not None or config is not None:
            raise UsageError("--from RUN takes the spec, --data and --config from the run: give none of them")
        return None, None
    if spec is None or data is None:
        raise UsageError("give a SPEC and --data (or --from RUN to repeat a run)")
    return spec, data


def _worker_args(
    spec: Path | None,
    data: str | None,
    out: Path,
    sets: list[str] | None,
    scale: str | None,
    config: Path | None,
    resume: bool,
    init_from: Path | None,
    freeze: list[str] | None,
    device: str,
    quiet: bool,
) -> list[str]:
    """The same command without the launcher options, for each worker process."""
    args = ["train", *([str(spec), "--data", data] if spec is not None and data is not None else [])]
    args += ["--out", str(out), "--device", device]
    for item in sets or ():
        args += ["--set", item]
    for flag, value in (("--scale", scale), ("--config", config), ("--init-from", init_from)):
        if value is not None:
            args += [flag, str(value)]
    for pattern in freeze or ():
        args += ["--freeze", pattern]
    return args + (["--resume"] if resume else []) + (["--quiet"] if quiet else [])
