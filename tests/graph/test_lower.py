"""Lowering: structural forms, blocks, includes, scales, overrides and references → flat graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from specc.api import check_text
from specc.errors import SpecError

HEAD = "specc: 1\nname: t\ninputs: {x: {shape: [4, 8, 8]}}\n"


def paths(text: str, **kw: object) -> dict[str, tuple[str, tuple[object, ...], int]]:
    g = check_text(HEAD + text, **kw)  # type: ignore[arg-type]
    return {n.path: (n.op.op_name, n.outputs[0].shape, n.inferred.params) for n in g.nodes}  # type: ignore[union-attr]


def test_sequence_names_and_refs() -> None:
    nodes = paths("""layers:
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1, name: a}
  - relu
  - conv2d: {out_channels: 8, kernel_size: 1, from: x, name: b}
  - add: {from: [a, -1]}
outputs: {y: "3"}
""")
    assert list(nodes) == ["a", "1", "b", "3"]
    assert nodes["3"][1] == (8, 8, 8)


def test_residual_auto_projection_matches_torchvision_downsample() -> None:
    g = check_text(
        HEAD
        + """layers:
  - residual:
      - conv2d: {out_channels: 16, kernel_size: 3, stride: 2, padding: 1, bias: false}
      - norm
    then: act
"""
    )
    by_path = {n.path: n for n in g.nodes}
    assert [n.path for n in g.nodes] == ["0.0", "0.1", "0.shortcut", "0.add", "0.then"]
    proj = by_path["0.shortcut"].inferred
    assert proj is not None and proj.param_shapes == [(16, 4, 1, 1), (16,), (16,)]
    assert by_path["0.then"].op.op_name == "act"


def test_residual_identity_when_shapes_match() -> None:
    nodes = paths("layers:\n  - residual: [conv2d: {out_channels: 4, kernel_size: 3, padding: 1}]\n")
    assert nodes["0.shortcut"][2] == 0


def test_repeat_index_and_dense_growth() -> None:
    nodes = paths("""layers:
  - repeat: 3
    name: stage
    body: {conv2d: {out_channels: "4 * ($i + 1)", kernel_size: 1}}
  - dense: [conv2d: {out_channels: $growth_rate, kernel_size: 3, padding: 1}]
    num_layers: 2
    growth_rate: 5
""")
    assert [nodes[f"stage.{k}"][1][0] for k in range(3)] == [4, 8, 12]
    assert nodes["1.cat1"][1] == (22, 8, 8)  # 12 + 5 + 5


def test_parallel_concat_and_add() -> None:
    nodes = paths("""layers:
  - parallel:
      - [conv2d: {out_channels: 2, kernel_size: 1}]
      - [conv2d: {out_channels: 3, kernel_size: 3, padding: 1}, relu]
      - []
  - parallel: [[relu], [sigmoid]]
    merge: add
""")
    assert nodes["0.merge"][1] == (9, 8, 8)
    assert nodes["1.merge"][0] == "add"


def test_block_params_scale_and_set() -> None:
    text = """vars: {width: 8}
scales: {tiny: {width: 2}}
blocks:
  unit:
    params: {out: int, k: 3}
    layers:
      - conv2d: {out_channels: $out, kernel_size: $k, padding: "$k // 2"}
      - act
layers:
  - unit: {out: $width, name: u1}
  - unit: {out: "$width * 2", k: 1}
"""
    assert paths(text)["u1.0"][1] == (8, 8, 8)
    assert paths(text, scale="tiny")["1.0"][1] == (4, 8, 8)
    assert paths(text, scale="tiny", sets=["width=3"])["1.0"][1] == (6, 8, 8)
    assert (
        paths(text, sets=["defaults.activation=gelu"])
        and check_text(HEAD + text, sets=["defaults.activation=gelu"]).node("u1.1").op.function == "gelu"
    )  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match="unknown scale 'tinny' \\(did you mean 'tiny'\\?\\)"):
        check_text(HEAD + text, scale="tinny")


def test_includes_relative_and_stdlib(tmp_path: Path) -> None:
    (tmp_path / "lib.yaml").write_text("""specc: 1
blocks:
  twice:
    params: {c: int}
    layers: [conv2d: {out_channels: $c, kernel_size: 1}, conv2d: {out_channels: $c, kernel_size: 1}]
""")
    g = check_text(HEAD + "include: [lib.yaml]\nlayers:\n  - twice: {c: 6}\n", base=tmp_path)
    assert [n.path for n in g.nodes] == ["0.0", "0.1"]
    with pytest.raises(SpecError, match="unknown standard library 'std:nope'"):
        check_text(HEAD + "include: ['std:nope']\nlayers: [relu]\n", base=tmp_path)


def test_include_cycle_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("specc: 1\ninclude: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("specc: 1\ninclude: [a.yaml]\n")
    with pytest.raises(SpecError, match="include cycle"):
        check_text(HEAD + "include: [a.yaml]\nlayers: [relu]\n", base=tmp_path)


def test_defaults_fill_and_are_overridable() -> None:
    g = check_text(
        HEAD + "defaults: {norm: group(2), init: kaiming_normal}\nlayers:\n  - norm\n  - norm: layer\n"
        "  - conv2d: {out_channels: 4, kernel_size: 1, init: zeros}\n"
    )
    kinds = [n.op.kind for n in g.nodes[:2]]  # type: ignore[attr-defined]
    assert kinds == ["group(2)", "layer"]
    assert g.nodes[2].op.init == "zeros"


def test_node_limit_and_repeat_limit() -> None:
    with pytest.raises(SpecError, match="between 0 and 10000"):
        check_text(HEAD + "layers:\n  - repeat: 100000\n    body: [relu]\n")
    with pytest.raises(SpecError, match="more than 100000 nodes"):
        check_text(HEAD + "layers:\n  - repeat: 10000\n    body: {repeat: 11, body: [relu]}\n")
