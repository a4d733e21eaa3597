"""`specc graph`: Mermaid and DOT diagrams with repeats collapsed and edges labelled by shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import SPECS, write_spec

from specc.api import check
from specc.graphviz import collapse

RESNET18 = str(SPECS / "resnet18.yaml")


def test_mermaid_collapses_repeats_and_shows_shapes(cli) -> None:
    result = cli("graph", RESNET18)
    assert result.code == 0, result.err
    out = result.out
    assert out.startswith("flowchart TD")
    assert "layer1 ×2 (basic)" in out and "layer4 ×2 (basic)" in out
    assert "(64, 56, 56) → (128, 28, 28)" in out  # layer2's in/out shapes
    assert '-->|"(512, 7, 7)"|' in out  # an edge labelled with its shape
    assert "layer1.0.conv1" not in out  # collapsed: no inner nodes
    assert out.count("-->") == 11  # image, 4 stem nodes, 4 stages, pool, fc, output


def test_dot_format_and_out_file(cli, tmp_path: Path) -> None:
    target = tmp_path / "g.dot"
    result = cli("graph", str(SPECS / "densenet121.yaml"), "--format", "dot", "--out", str(target))
    assert result.code == 0, result.err
    text = target.read_text()
    assert text.startswith('digraph "densenet121" {') and text.rstrip().endswith("}")
    assert "denseblock1 ×6 (dense_block)" in text and "transition1 (transition)" in text
    assert '[label="(256, 56, 56)"]' in text


def test_depth_expands_and_parallel_is_not_a_repeat(cli) -> None:
    out = cli("graph", str(SPECS / "small_inception.yaml"), "--depth", "2").out
    assert "inc1.0 (basic_conv)" in out and "inc1.merge: concat" in out
    top = cli("graph", str(SPECS / "small_inception.yaml")).out
    assert "inc1 (inception)" in top and "×4" not in top  # four different branches, not a repeat


def test_set_and_scale_apply(cli) -> None:
    out = cli("graph", RESNET18, "--scale", "tiny").out  # tiny sets width, classes and res=32
    assert "(3, 32, 32)" in out and "(10)" in out
    out = cli("graph", RESNET18, "--scale", "tiny", "--set", "inputs.image.shape=[3,48,48]").out
    assert "(3, 48, 48)" in out and "(10)" in out  # --set wins over the scale


def test_collapse_units_and_edges() -> None:
    diagram = collapse(check(SPECS / "small_resnet.yaml"))
    kinds = {u.key: u.kind for u in diagram.units}
    assert kinds["stage1"] == "group" and kinds["stem"] == "node" and kinds["image"] == "input"
    assert {(e.src, e.dst) for e in diagram.edges} >= {("input:image", "stem"), ("stage1", "stage2")}


def test_bad_spec_exits_2(cli, tmp_path: Path) -> None:
    bad = write_spec(
        tmp_path, "specc: 1\nname: bad\ninputs: {x: {shape: [4]}}\nlayers: [conv2d: {out_channels: 2}]\n"
    )
    result = cli("graph", str(bad))
    assert result.code == 2 and "error:" in result.err and "Traceback" not in result.err
    assert cli("graph", RESNET18, "--format", "png").code == 2
    assert cli("graph", RESNET18, "--depth", "0").code == 2


def test_svg_needs_graphviz(cli) -> None:
    result = cli("graph", RESNET18, "--format", "svg")
    if shutil.which("dot") is None:
        assert result.code == 2 and "Graphviz" in result.err
    else:
        assert result.code == 0 and "<svg" in result.out


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_every_bundled_spec_draws(cli, fmt: str) -> None:
    for spec in sorted(SPECS.glob("*.yaml")):
        result = cli("graph", str(spec), "--format", fmt)
        assert result.code == 0, (spec.name, result.err)
