"""``specc build``: compile a spec to torch and print the per-layer table (imports torch, unlike the
commands of :mod:`specc.cli.spec_cmds`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from specc.cli.app import app, print_table, say
from specc.cli.spec_cmds import (
    IncludeRootOpt,
    JsonOpt,
    MaxParamsOpt,
    ScaleOpt,
    SetOpt,
    use_include_roots,
    use_max_params,
)


@app.command()
def build(
    spec: Path,
    sets: SetOpt = None,
    scale: ScaleOpt = None,
    as_json: JsonOpt = False,
    save: Annotated[
        Path | None, typer.Option("--save", help="write the initialised weights (.safetensors)")
    ] = None,  # noqa: UP045
    max_params: MaxParamsOpt = None,
    seed: Annotated[int, typer.Option(help="seed for initialisation")] = 0,
    include_root: IncludeRootOpt = None,
) -> None:
    """Compile to a torch nn.Module and print the per-layer table (path, op, output, params, MACs)."""
    from specc.api import check as check_spec
    from specc.graph.budget import check_param_limit
    from specc.summary import graph_json, node_table

    use_include_roots(include_root)
    use_max_params(max_params)
    graph = check_spec(spec, sets or [], scale)
    check_param_limit(graph)  # before any parameter is allocated
    from specc.nn import build as build_model
    from specc.nn import save_weights

    model = build_model(graph, seed=seed)
    real = sum(p.numel() for p in model.parameters())
    if real != graph.params:
        raise AssertionError(f"static parameter count {graph.params} != built {real}")
    if save is not None:
        save_weights(model, save)
    if as_json:
        out = graph_json(graph)
        if save is not None:
            out["saved"] = str(save)
        print(json.dumps(out, indent=2))
        return
    print_table(node_table(graph))
    if save is not None:
        say(f"saved initialised weights to {save}")
