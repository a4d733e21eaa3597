"""Lowering: structural forms, blocks, includes, scales, overrides and references → flat graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from specc.api import check_text
from specc.errors import SpecError
from specc.graph import Ref

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


# ---- blocks that read their input, conditions ---------------------------------------------------

MOBILENET = """specc: 1
name: mbv2
inputs: {image: {shape: [3, 32, 32]}}
defaults: {norm: batch, activation: relu}
blocks:
  conv_bn_act:
    params: {out: int, kernel_size: 1, stride: 1, groups: 1}
    layers:
      - conv2d: {out_channels: $out, kernel_size: $kernel_size, stride: $stride,
                 padding: "($kernel_size - 1) // 2", groups: $groups, bias: false}
      - norm
      - act
  inverted_residual:
    params: {out: int, stride: 1, expand: 6, hidden: "$in.channels * $expand"}
    residual:
      - conv_bn_act: {out: $hidden}
        if: "$expand != 1"
      - conv_bn_act: {out: $hidden, kernel_size: 3, stride: $stride, groups: $hidden}
      - conv2d: {out_channels: $out, kernel_size: 1, bias: false}
      - norm
    shortcut: "'identity' if $stride == 1 and $in.channels == $out else 'none'"
layers:
  - conv2d: {out_channels: 16, kernel_size: 3, stride: 2, padding: 1, bias: false}
  - inverted_residual: {out: 16, expand: 1}
  - inverted_residual: {out: 24, stride: 2}
  - inverted_residual: {out: 24}
"""


def test_inverted_residual_reads_its_input_and_adds_only_when_it_can() -> None:
    g = check_text(MOBILENET)
    nodes = {n.path: n for n in g.nodes}
    assert "1.0.0" not in nodes and nodes["1.1.0"].op.groups == 16  # type: ignore[attr-defined]  # expand 1: no 1x1
    assert "1.add" in nodes and nodes["1.add"].inputs[1].node == "0"  # 16 -> 16, stride 1: identity add
    assert "2.add" not in nodes and nodes["2.0.0"].outputs[0].shape == (96, 16, 16)  # 16 * 6, no add
    assert nodes["3.0.0"].outputs[0].shape == (144, 8, 8) and "3.add" in nodes  # 24 * 6; 24 -> 24 adds
    assert nodes["3.add"].inputs == [Ref("3.3"), Ref("2.3")]


def test_in_is_the_sequence_input_and_if_keeps_numbering() -> None:
    nodes = paths("""layers:
  - conv2d: {out_channels: "$in.channels * 2", kernel_size: 1}
  - repeat: 3
    body:
      - conv2d: {out_channels: "$in.channels + 1", kernel_size: 1}
      - relu: {}
        if: "$i == 1"
      - linear: "$in.shape[-1]"
        if: "$in.rank == 1"
""")
    assert nodes["0"][1] == (8, 8, 8)  # the network input has 4 channels
    assert [nodes[f"1.{k}.0"][1][0] for k in range(3)] == [9, 10, 11]  # each iteration's own input
    assert "1.1.1" in nodes and "1.0.1" not in nodes and "1.2.1" not in nodes
    assert not any(p.endswith(".2") for p in nodes)  # rank 3: the linear is left out


def test_if_add_and_dropped_reference() -> None:
    nodes = paths("""vars: {skip: false}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1, name: c}
  - add: {from: [x, c]}
    if: $skip
""")
    assert list(nodes) == ["c"]
    with pytest.raises(SpecError, match=r"'c' is left out by its if: \(line 5\)"):
        check_text(HEAD + "layers:\n  - relu: {name: c}\n    if: false\n  - add: {from: [x, c]}\n")
    with pytest.raises(SpecError, match="if: must give true or false, got 3"):
        check_text(HEAD + "layers:\n  - relu: {}\n    if: '$in.rank'\n")


def test_drop_path_residual_option() -> None:
    g = check_text(
        HEAD + "layers:\n  - residual: [conv2d: {out_channels: 4, kernel_size: 1}]\n    drop_path: 0.2\n"
    )
    nodes = {n.path: n for n in g.nodes}
    assert [n.path for n in g.nodes] == ["0.0", "0.drop_path", "0.shortcut", "0.add"]
    assert nodes["0.drop_path"].op.p == 0.2  # type: ignore[attr-defined]
    assert nodes["0.add"].inputs[0] == Ref("0.drop_path")
    zero = check_text(HEAD + "vars: {p: 0.0}\nlayers:\n  - residual: [relu]\n    drop_path: $p\n")
    assert [n.path for n in zero.nodes] == ["0.0", "0.shortcut", "0.add"]  # p = 0: no node
    none = check_text(HEAD + "layers:\n  - residual: [relu]\n    shortcut: none\n    drop_path: 0.3\n")
    assert [n.path for n in none.nodes] == ["0.0"]  # no add, nothing to drop


def test_block_default_reads_earlier_params_and_in() -> None:
    nodes = paths("""blocks:
  widen:
    params: {factor: 2, out: "$in.channels * $factor"}
    layers: [conv2d: {out_channels: $out, kernel_size: 1}]
layers:
  - widen: {}
  - widen: {factor: 3}
  - widen: {out: 5}
""")
    assert [nodes[p][1][0] for p in ("0", "1", "2")] == [8, 24, 5]


def test_dotted_names_give_exact_paths() -> None:
    nodes = paths("layers:\n  - relu: {name: a.0.b}\n  - relu: {name: a.1, from: a.0.b}\n")
    assert list(nodes) == ["a.0.b", "a.1"]
    with pytest.raises(SpecError, match="would sit inside node 'a'"):
        check_text(HEAD + "layers:\n  - relu: {name: a}\n  - relu: {name: a.b}\n")
    with pytest.raises(SpecError, match="already a prefix"):
        check_text(HEAD + "layers:\n  - relu: {name: a.b}\n  - relu: {name: a}\n")


# ---- errors name where a variable's value was written -------------------------------------------


def errors(text: str, **kw: object) -> list[str]:
    with pytest.raises(SpecError) as err:
        check_text(text, "s.yaml", **kw)  # type: ignore[arg-type]
    return [str(d) for d in err.value.diagnostics]


ATTN = """specc: 1
name: t
inputs: {x: {shape: [seq, 16]}}
vars:
  width: 16
  heads: 4
scales:
  odd: {heads: 3}
blocks:
  attend:
    params: {num_heads: int}
    layers: [multihead_attention: {num_heads: $num_heads}]
layers:
  - attend: {num_heads: $heads}
  - attend: {num_heads: 0}
"""


def test_variable_errors_name_the_line_of_the_value() -> None:
    assert errors(ATTN) == [
        "s.yaml:12:47: blocks.attend.layers[0].multihead_attention.num_heads: input should be greater than 0, "
        "got 0 (value from layers[1].attend.num_heads at line 15) (in block used at line 15)"
    ]
    (shape,) = errors(ATTN.replace("num_heads: 0", "num_heads: 2"), scale="odd")
    assert (
        "not divisible by num_heads 3 (or set head_dim) (value from scales.odd.heads at line 8) (in block used at line 14)"
        in shape
    )
    (shape,) = errors(ATTN.replace("num_heads: 0", "num_heads: 2"), sets=["heads=5"])
    assert "(value from --set heads=5)" in shape
    (expr,) = errors(ATTN.replace("num_heads: 0}", 'num_heads: "16 // ($heads - 4)"}'))
    assert (
        expr.startswith("s.yaml:15:25: layers[1].attend.num_heads: expression") and "divides by zero" in expr
    )
    assert expr.endswith("(value from vars.heads at line 6)")


def test_a_failed_variable_is_reported_once() -> None:
    text = HEAD + 'vars:\n  a: "1 // 0 + $b"\n  b: 2\n  c: "$a + 1"\nlayers:\n  - linear: $c\n'
    assert [e.split(": ", 2)[1] for e in errors(text)] == ["vars.a"]


# ---- budgets --------------------------------------------------------------------------------------


def test_expansion_budget_counts_items_left_out_too() -> None:
    import time

    start = time.process_time()  # (the node budget is tested in tests/lang/test_hostile.py, capped)
    with pytest.raises(SpecError) as err:
        check_text(
            HEAD + "layers:\n  - repeat: 10000\n    body: {repeat: 10000, body: [{relu: {}, if: false}]}\n"
        )
    assert [d.message for d in err.value.diagnostics] == [
        "the spec expands to more than 200000 items (repeats nested too far?)"
    ]
    assert time.process_time() - start < 20  # stopped at the budget, far from 10**8 items


def test_an_error_inside_a_block_is_reported_once_for_all_calls() -> None:
    text = HEAD + (
        "blocks:\n  bad:\n    params: {k: 9}\n    layers: [conv2d: {out_channels: 4, kernel_size: $k}]\n"
        "layers:\n  - bad: {}\n    from: x\n  - bad: {from: x}\n  - bad: {from: x}\n"
    ).replace("  - bad: {}\n    from: x\n", "  - bad: {from: x}\n")
    (only,) = errors(text)
    assert "conv2d '0' cannot accept input (4, 8, 8)" in only
    assert only.endswith(
        "(value from blocks.bad.params.k at line 6) (in block used at line 9, and 2 other calls)"
    )
