"""``specc weights import|export``: published checkpoints into specc networks and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specc.cli.app import app, fail
from specc.cli.spec_cmds import IncludeRootOpt, ScaleOpt, SetOpt, use_include_roots
from specc.errors import UsageError

weights_app = typer.Typer(
    help="Import published weights (Hugging Face folders, PyTorch state dicts) into a spec; export a run "
    "as a Hugging Face folder.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")

MAP_HELP = (
    "name map: specc, hf-gpt2, hf-bert, hf-llama, hf-vit, torchvision-resnet "
    "(default: config.json's model_type, else the map that fits most tensors)"
)


@weights_app.command("import")
def import_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="Hugging Face model folder, .safetensors/.pt/.pth/.bin state dict, or run folder"
        ),
    ],
    spec: Annotated[Path, typer.Option("--spec", help="the spec the weights are for")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the .safetensors file to write")],
    sets: SetOpt = None,
    scale: ScaleOpt = None,
    name_map: Annotated[str | None, typer.Option("--map", help=MAP_HELP)] = None,  # noqa: UP045
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="keep the spec's init for tensors the source lacks or has in another shape",
        ),
    ] = False,
    include_root: IncludeRootOpt = None,
) -> None:
    """Map SOURCE's tensors onto SPEC's, check every name and shape, and write them in specc's names."""
    use_include_roots(include_root)
    try:
        from specc.pretrained.importer import import_weights

        for line in import_weights(
            source,
            spec,
            out,
            sets=tuple(sets or ()),
            scale=scale,
            map_name=name_map,
            allow_partial=allow_partial,
        ):
            print(line)
    except Exception as exc:  # noqa: BLE001 - error types become exit codes in fail()
        fail(exc)


@weights_app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="a `specc train` run folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the folder to write (must not exist)")],
    fmt: Annotated[str, typer.Option("--format", help="hf: a Hugging Face model folder")] = "hf",
    family: Annotated[
        str | None, typer.Option("--family", help="gpt2 or llama (default: the one that fits the spec)")
    ] = None,  # noqa: UP045
) -> None:
    """Write a run's network as a Hugging Face folder (config.json + model.safetensors) for transformers."""
    try:
        if fmt != "hf":
            raise UsageError(f"--format {fmt!r}: only hf is supported")
        from specc.pretrained.hf_export import export_run_hf

        print(f"wrote {export_run_hf(run, out, family=family)}")
    except Exception as exc:  # noqa: BLE001 - error types become exit codes in fail()
        fail(exc)
