"""``specc render`` writes a valid spec that checks to the same graph (every bundled spec, random
valid ``--set`` overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import SPECS, run_cli, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specc.api import check, check_text
from specc.errors import SpecError
from specc.graph import Graph
from specc.lang.document import load_spec
from specc.summary import render

CASES = sorted(SPECS.glob("*.yaml"))


def fingerprint(graph: Graph) -> dict[str, Any]:
    """Everything that makes two graphs the same network."""
    return {
        "inputs": graph.inputs,
        "nodes": [
            (
                n.path,
                n.op.op_name,
                n.op.args(),
                n.op.init,
                n.op.bias_init,
                [str(r) for r in n.inputs],
                n.outputs,
            )
            for n in graph.nodes
        ],
        "params": graph.params,
        "param_shapes": graph.param_shapes(),
        "outputs": {k: str(r) for k, r in graph.outputs.items()},
        "labels": graph.labels,
        "dims": graph.dims,
        "ties": graph.ties,
    }


def overrides(spec: Path) -> st.SearchStrategy[list[str]]:
    """--set values a user might try: defaults, and small changes to integer variables."""
    doc = load_spec(spec)
    ints = [k for k, v in doc.spec.vars.items() if isinstance(v, int) and not isinstance(v, bool)]
    one = st.one_of(
        st.sampled_from(["relu", "gelu", "silu", "tanh"]).map(lambda v: f"defaults.activation={v}"),
        st.sampled_from(["xavier_uniform", "kaiming_normal", "zeros", "default"]).map(
            lambda v: f"defaults.init={v}"
        ),
        st.sampled_from(["batch", "group", "layer", "none"]).map(lambda v: f"defaults.norm={v}"),
        *(
            [st.tuples(st.sampled_from(ints), st.integers(1, 3)).map(lambda t: f"{t[0]}={2 * t[1]}")]
            if ints
            else []
        ),
    )
    return st.lists(one, max_size=3)


@pytest.mark.parametrize("spec", CASES, ids=[p.stem for p in CASES])
def test_render_round_trips(spec: Path) -> None:
    scale = "tiny" if "tiny" in load_spec(spec).spec.scales else None
    checked = {"valid": 0}

    @settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(overrides(spec))
    def round_trip(sets: list[str]) -> None:
        try:
            graph = check(spec, sets, scale)
        except SpecError:
            return  # not every override fits every spec (group norm channels, head counts ...)
        checked["valid"] += 1
        text = render(graph)
        again = check_text(text, "rendered.yaml")
        assert fingerprint(again) == fingerprint(graph)
        assert render(again).split("\n", 1)[1] == text.split("\n", 1)[1]  # a fixed point (bar the header)

    round_trip()
    assert checked["valid"] >= 1


def test_render_cli_output_checks(tmp_path: Path) -> None:
    result = run_cli("render", str(SPECS / "resnet18.yaml"), "--scale", "tiny", "--set", "width=4")
    assert result.code == 0, result.err
    assert result.out.startswith("# specc render of ") and "--set width=4" in result.out.splitlines()[0]
    rendered = write_spec(tmp_path, result.out)
    assert run_cli("check", str(rendered)).code == 0
    assert "name: layer1.0.conv1, from: [maxpool]" in result.out
