"""Axis, resampling, learned-tensor and new activation/norm ops (issue 11): shape rules against
hand-computed shapes, parameters and MACs; numerical equality with torch's own functions; constant
init; the norm-axes note; ONNX (torchscript, opset 17) + onnxruntime parity at two batch sizes (and two
lengths of a symbolic axis)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from specc.api import check_text
from specc.errors import SpecError
from specc.nn import build as build_model
from specc.ops import OPS, InferContext, ShapeMismatch, TensorType

T_ = TensorType


def infer(op: str, args: dict[str, Any], *types: TensorType) -> Any:
    return OPS[op].model_validate(args).infer(list(types), InferContext({"seq": 10}))


def build(op: str, args: dict[str, Any], *types: TensorType) -> nn.Module:
    spec = OPS[op].model_validate(args)
    return spec.build(list(types), spec.infer(list(types), InferContext()))


# ---- shape rules ------------------------------------------------------------------------------

SHAPES: list[tuple[str, dict[str, Any], tuple[Any, ...], list[tuple[Any, ...]], int, int]] = [
    ("permute", {"dims": [1, 2, 0]}, (3, 4, 5), [(4, 5, 3)], 0, 0),
    ("permute", {"dims": [-1, 0]}, ("seq", 8), [(8, "seq")], 0, 0),
    ("transpose", {"dim0": 0, "dim1": 1}, (768, 196), [(196, 768)], 0, 0),
    ("transpose", {"dim0": -1, "dim1": 0}, (2, "seq", 4), [(4, "seq", 2)], 0, 0),
    ("slice", {"start": 1}, (197, 8), [(196, 8)], 0, 0),
    ("slice", {"dim": -1, "start": 1, "stop": -1, "step": 2}, (3, 10), [(3, 4)], 0, 0),
    ("slice", {"start": 1}, ("seq", 8), [("seq-1", 8)], 0, 0),
    ("slice", {"start": 0, "stop": -2, "step": 2}, ("seq", 8), [("((seq-2)+1)//2", 8)], 0, 0),
    ("slice", {"start": -4}, ("seq", 8), [(4, 8)], 0, 0),
    ("slice", {"stop": 3}, ("seq", 8), [(3, 8)], 0, 0),
    ("split", {"split_size_or_sections": [2, 6]}, (8, 3, 3), [(2, 3, 3), (6, 3, 3)], 0, 0),
    (
        "split",
        {"split_size_or_sections": 3, "dim": -1},
        ("seq", 8),
        [("seq", 3), ("seq", 3), ("seq", 2)],
        0,
        0,
    ),
    ("chunk", {"chunks": 3, "dim": -1}, ("seq", 12), [("seq", 4)] * 3, 0, 0),
    ("chunk", {"chunks": 4}, (6,), [(2,), (2,), (2,)], 0, 0),  # torch.chunk: fewer pieces than asked
    ("upsample", {"scale_factor": 2}, (4, 5, 6), [(4, 10, 12)], 0, 0),
    ("upsample", {"scale_factor": 1.5, "mode": "bilinear"}, (4, 5, 6), [(4, 7, 9)], 0, 4 * 63 * 4),
    (
        "upsample",
        {"size": [7, 3], "mode": "bilinear", "align_corners": True},
        (2, 4, 4),
        [(2, 7, 3)],
        0,
        2 * 21 * 4,
    ),
    ("upsample", {"scale_factor": 3, "mode": "linear"}, (2, "seq"), [(2, "seq*3")], 0, 2 * 30 * 2),
    (
        "conv_transpose2d",
        {"out_channels": 8, "kernel_size": 2, "stride": 2},
        (16, 7, 7),
        [(8, 14, 14)],
        16 * 8 * 4 + 8,
        49 * 16 * 8 * 4,
    ),
    (
        "conv_transpose2d",
        {
            "out_channels": 6,
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "output_padding": 1,
            "groups": 2,
            "bias": False,
        },
        (4, 5, 5),
        [(6, 10, 10)],
        4 * 3 * 9,
        25 * 4 * 3 * 9,
    ),
    (
        "conv_transpose2d",
        {"out_channels": 2, "kernel_size": 3, "dilation": 2},
        (1, 4, 4),
        [(2, 8, 8)],
        2 * 9 + 2,
        16 * 18,
    ),
    (
        "conv_transpose1d",
        {"out_channels": 3, "kernel_size": 4, "stride": 2, "padding": 1},
        (2, "seq"),
        [(3, "seq*2")],
        2 * 3 * 4 + 3,
        20 * 12,
    ),
    (
        "conv_transpose1d",
        {"out_channels": 3, "kernel_size": 3},
        (2, "seq"),
        [(3, "seq+2")],
        2 * 3 * 3 + 3,
        20 * 9,
    ),
    ("pixel_shuffle", {"upscale_factor": 2}, (64, 16, 16), [(16, 32, 32)], 0, 0),
    ("pixel_unshuffle", {"downscale_factor": 4}, (3, 224, 224), [(48, 56, 56)], 0, 0),
    ("parameter", {"shape": [1, 768], "batched": True}, (196, 768), [(1, 768)], 768, 0),
    ("parameter", {"shape": [96, 1, 1]}, (3, 8, 8), [(96, 1, 1)], 96, 0),
    ("scale", {}, (96, 7, 7), [(96, 7, 7)], 96, 96 * 49),
    ("scale", {"dim": -1}, ("seq", 16), [("seq", 16)], 16, 160),
    ("norm", {"kind": "layer(channels)"}, (96, 7, 7), [(96, 7, 7)], 192, 2 * 96 * 49),
    ("norm", {"kind": "rms(channels)"}, (8, "seq"), [(8, "seq")], 8, 160),
    ("norm", {"kind": "layer(last)"}, (7, 7, 96), [(7, 7, 96)], 192, 2 * 96 * 49),
    ("norm", {"kind": "layer(sample)"}, (4, 6), [(4, 6)], 48, 48),
    ("norm", {"kind": "layer"}, (4, 3, 3), [(4, 3, 3)], 72, 72),
    ("relu6", {}, (3, 4), [(3, 4)], 0, 0),
]


@pytest.mark.parametrize(("op", "args", "shape", "outs", "params", "macs"), SHAPES)
def test_shape_rule(
    op: str, args: dict[str, Any], shape: tuple[Any, ...], outs: list[tuple[Any, ...]], params: int, macs: int
) -> None:
    inferred = infer(op, args, T_(shape))
    assert [t.shape for t in inferred.outputs] == outs
    assert (inferred.params, inferred.macs) == (params, macs)


def test_parameter_and_scale_layouts() -> None:
    assert infer("parameter", {"shape": [197, 8], "batched": True}, T_((3,))).param_shapes == [(1, 197, 8)]
    assert infer("scale", {}, T_((5, 9))).param_shapes == [(5, 1)]
    assert infer("scale", {"dim": 1}, T_((5, 9, 2))).param_shapes == [(9, 1)]


@pytest.mark.parametrize(
    ("op", "args", "shape", "message"),
    [
        ("permute", {"dims": [0, 1]}, (3, 4, 5), "dims [0, 1] name 2 axes, the input has 3"),
        ("permute", {"dims": [0, 0, 1]}, (3, 4, 5), "is not a permutation"),
        ("transpose", {"dim0": 0, "dim1": 3}, (3, 4), "dim 3 is out of range for a 2-d input"),
        ("slice", {"start": 5, "stop": 5}, (8,), "is empty"),
        ("slice", {"start": -3, "stop": 2}, ("seq",), "has no fixed length"),
        ("slice", {"stop": 12}, ("seq", 3), "needs 'seq' >= 12, its size is 10"),
        ("split", {"split_size_or_sections": [2, 3]}, (6, 2), "add up to 5, the axis has 6"),
        ("split", {"split_size_or_sections": 2}, ("seq", 4), "symbolic axis 'seq'"),
        ("upsample", {"scale_factor": 2, "mode": "linear"}, (3, 4, 4), "needs a 1-d map"),
        ("upsample", {"scale_factor": 1.5}, (2, "seq"), "must be a whole number"),
        ("upsample", {"size": [4, 4]}, (2, 8), "size needs 1 values"),
        (
            "conv_transpose2d",
            {"out_channels": 4, "kernel_size": 2, "groups": 2},
            (3, 4, 4),
            "not divisible by groups",
        ),
        ("pixel_shuffle", {"upscale_factor": 2}, (6, 4, 4), "channels 6 is not divisible by 4"),
        ("pixel_unshuffle", {"downscale_factor": 2}, (3, 5, 4), "spatial size 5 is not divisible by 2"),
        ("scale", {"dim": 0}, ("seq", 8), "symbolic axis 'seq'"),
        ("norm", {"kind": "layer(channels)"}, ("seq", 8), "symbolic axis 'seq'"),
    ],
)
def test_shape_errors(op: str, args: dict[str, Any], shape: tuple[Any, ...], message: str) -> None:
    with pytest.raises(
        ShapeMismatch, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        infer(op, args, T_(shape))


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        ("upsample", {"scale_factor": 2, "size": 4}, "exactly one of size and scale_factor"),
        ("upsample", {"scale_factor": 2, "align_corners": True}, "align_corners applies to mode linear"),
        (
            "conv_transpose2d",
            {"out_channels": 4, "kernel_size": 3, "stride": 2, "output_padding": 2},
            "smaller than stride",
        ),
        ("norm", {"kind": "batch(channels)"}, "unknown norm"),
        ("norm", {"kind": "layer(pixels)"}, "unknown norm"),
        ("parameter", {"shape": []}, "at least 1 item"),
        ("split", {"split_size_or_sections": []}, "at least one size"),
    ],
)
def test_arguments_are_validated(op: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OPS[op].model_validate(args)


# ---- numerics against torch ----------------------------------------------------------------------


def test_ops_compute_what_torch_computes() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    same = torch.testing.assert_close
    same(build("permute", {"dims": [1, 2, 0]}, T_((4, 6, 6)))(x), x.permute(0, 2, 3, 1))
    same(build("transpose", {"dim0": 0, "dim1": 2}, T_((4, 6, 6)))(x), x.transpose(1, 3))
    same(build("slice", {"dim": 1, "start": 1, "stop": -1, "step": 2}, T_((4, 6, 6)))(x), x[:, :, 1:-1:2])
    pieces = build("split", {"split_size_or_sections": [1, 3], "dim": 0}, T_((4, 6, 6)))(x)
    for got, want in zip(pieces, torch.split(x, [1, 3], dim=1), strict=True):
        same(got, want)
    for got, want in zip(
        build("chunk", {"chunks": 4, "dim": -1}, T_((4, 6, 6)))(x), x.chunk(4, dim=-1), strict=True
    ):
        same(got, want)
    up = build("upsample", {"scale_factor": 1.5, "mode": "bilinear", "align_corners": True}, T_((4, 6, 6)))
    same(up(x), F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True))
    same(build("pixel_shuffle", {"upscale_factor": 2}, T_((4, 6, 6)))(x), F.pixel_shuffle(x, 2))
    same(build("pixel_unshuffle", {"downscale_factor": 3}, T_((4, 6, 6)))(x), F.pixel_unshuffle(x, 3))
    tokens = build("parameter", {"shape": [1, 6], "batched": True}, T_((4, 6, 6)))
    assert tokens(x).shape == (2, 1, 6) and tokens(x).data_ptr() == tokens.weight.data_ptr()  # a view


def test_channel_norms_match_their_definitions() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4)
    ln = build("norm", {"kind": "layer(channels)", "eps": 1e-6}, T_((5, 3, 4)))
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-6) * ln.weight[:, None, None] + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), want)  # Hugging Face ConvNext's channels_first formula
    rms = build("norm", {"kind": "rms(channels)", "eps": 1e-6}, T_((5, 3, 4)))
    with torch.no_grad():
        rms.weight.uniform_(0.5, 1.5)
    torch.testing.assert_close(
        rms(x), nn.functional.rms_norm(x.movedim(1, -1), (5,), rms.weight, 1e-6).movedim(-1, 1)
    )
    rms_default_eps = build("norm", {"kind": "rms(channels)"}, T_((5, 3, 4)))
    torch.testing.assert_close(rms_default_eps(x), nn.RMSNorm(5)(x.movedim(1, -1)).movedim(-1, 1))


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("relu6", F.relu6),
        ("hardswish", F.hardswish),
        ("hardsigmoid", F.hardsigmoid),
        ("mish", F.mish),
        ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
        ("silu", F.silu),
    ],
)
def test_new_activations(name: str, fn: Any) -> None:
    x = torch.linspace(-8, 8, 101).reshape(1, 101)
    torch.testing.assert_close(build(name, {}, T_((101,)))(x), fn(x))
    torch.testing.assert_close(build("act", {"fn": name}, T_((101,)))(x), fn(x))
    graph = check_text(
        f"specc: 1\nname: a\ninputs: {{x: {{shape: [4]}}}}\ndefaults: {{activation: {name}}}\nlayers: [act]\n"
    )
    assert graph.nodes[0].op.args()["fn"] == name  # usable as defaults.activation


def test_tanh_gelu_two_spellings_agree() -> None:
    x = torch.randn(3, 7)
    torch.testing.assert_close(
        build("gelu", {"approximate": "tanh"}, T_((7,)))(x), build("gelu_tanh", {}, T_((7,)))(x)
    )


# ---- constant init, learned tensors, notes -------------------------------------------------------

LEARNED = """specc: 1
name: learned
inputs: {x: {shape: [4, 3, 3]}}
defaults: {init: kaiming_normal, bias_init: {kind: constant, value: 0.25}}
layers:
  - parameter: {shape: [4, 1, 1], init: {kind: constant, value: 1.0e-6}, name: gamma}
  - conv2d: {out_channels: 4, kernel_size: 1, from: x, name: conv}
  - mul: {from: [gamma, conv]}
  - scale: {init: {kind: constant, value: -2.0}, name: scale}
  - scale: {dim: -1, requires_grad: false, name: fixed}
  - norm: {kind: layer(channels), name: ln}
  - parameter: {shape: [4, 3, 3], name: zeros}
  - add: {from: [-2, zeros]}
"""


def test_constant_init_and_learned_tensors() -> None:
    model = build_model(check_text(LEARNED))
    assert torch.all(model.gamma.weight == 1e-6)
    assert torch.all(model.scale.weight == -2.0) and model.scale.weight.shape == (4, 1, 1)
    assert (
        torch.all(model.fixed.weight == 1.0) and not model.fixed.weight.requires_grad
    )  # kaiming: not for gains
    assert torch.all(model.zeros.weight == 0)  # parameter default: zeros
    assert torch.all(model.conv.bias == 0.25)  # constant bias_init from defaults
    assert torch.all(model.ln.weight == 1) and torch.all(
        model.ln.bias == 0.25
    )  # norm scale keeps torch's ones
    x = torch.randn(2, 4, 3, 3)
    y = model(x)
    conv = model.conv(x)
    torch.testing.assert_close(y, model.ln(conv * 1e-6 * -2.0 * model.fixed.weight))
    y.sum().backward()
    assert model.gamma.weight.grad is not None and model.fixed.weight.grad is None


def test_constant_init_needs_a_value() -> None:
    bad = LEARNED.replace("{kind: constant, value: -2.0}", "{kind: constant}")
    with pytest.raises(SpecError, match="kind: constant needs a value"):
        check_text(bad)
    with pytest.raises(SpecError, match="value applies to kind: constant only"):
        check_text(LEARNED.replace("{kind: constant, value: -2.0}", "{kind: zeros, value: 1.0}"))


DEFAULT_INIT = """specc: 1
name: default_init
inputs: {x: {shape: [4, 3, 3]}}
defaults: {init: {kind: constant, value: 0.5}, bias_init: {kind: constant, value: -1.0}}
layers:
  - conv2d: {out_channels: 4, kernel_size: 1, name: conv}
  - scale: {name: gain}
  - parameter: {shape: [4, 3, 3], name: token}
  - parameter: {shape: [4, 1, 1], init: {kind: constant, value: 2.0}, name: own}
  - conv2d: {out_channels: 4, kernel_size: 1, init: ones, from: conv, name: ones}
"""


def test_defaults_init_takes_every_choice_of_an_op_init_but_not_learned_tensors() -> None:
    """``defaults.init`` is the same choice as an op's ``init`` (here a constant) and fills every op that
    sets none, except ``parameter``/``scale``: their own start (zeros, ones) wins over the document-wide
    init; only their own ``init`` changes it. An op's own ``init`` wins over ``defaults.init``."""
    model = build_model(check_text(DEFAULT_INIT))
    assert torch.all(model.conv.weight == 0.5) and torch.all(model.conv.bias == -1.0)
    assert torch.all(model.gain.weight == 1.0)  # scale: ones, not defaults.init's 0.5
    assert torch.all(model.token.weight == 0.0)  # parameter: zeros
    assert torch.all(model.own.weight == 2.0)  # its own init
    assert torch.all(model.ones.weight == 1.0) and torch.all(model.ones.bias == -1.0)
    graph = check_text(DEFAULT_INIT)
    inits = {n.path: n.op.init for n in graph.nodes}
    assert inits["gain"] is None and inits["token"] is None  # nothing filled in, so render shows none
    fan_based = build_model(
        check_text(DEFAULT_INIT.replace("{kind: constant, value: 0.5}", "kaiming_normal"))
    )
    # a fan-based defaults.init is fine too: it does not reach them
    assert torch.all(fan_based.gain.weight == 1.0)


def test_defaults_init_errors_read_as_an_op_init_error() -> None:
    with pytest.raises(SpecError, match=r"defaults.init: kind: constant needs a value") as bad:
        check_text(DEFAULT_INIT.replace("{kind: constant, value: 0.5}", "{kind: constant}"))
    assert "literal" not in str(bad.value)  # one clear message, not every alternative's
    with pytest.raises(SpecError, match=r"defaults.init: input should be 'default', .*got 'kaiming'"):
        check_text(DEFAULT_INIT.replace("{kind: constant, value: 0.5}", "kaiming"))


@pytest.mark.parametrize("op", ["parameter: {shape: [4, 1, 1]", "scale: {dim: 0"])
@pytest.mark.parametrize("kind", ["kaiming_normal", "{kind: xavier_uniform, gain: 2.0}"])
def test_learned_tensors_refuse_fan_based_init(op: str, kind: str) -> None:
    """A fan-based init on a token or a gain was silently skipped before; now it is an error."""
    text = DEFAULT_INIT.replace("  - scale: {name: gain}", f"  - {op}, init: {kind}, name: gain}}")
    with pytest.raises(SpecError, match=r"needs a layer's fan-in/fan-out, which a (parameter|scale) tensor"):
        check_text(text)


def test_plain_layer_norm_on_a_map_gets_a_note(cli, tmp_path: Any) -> None:
    spec = tmp_path / "cnn.yaml"
    spec.write_text(
        "specc: 1\nname: cnn\ninputs: {x: {shape: [3, 8, 8]}}\ndefaults: {norm: layer}\n"
        "layers:\n  - conv2d: {out_channels: 4, kernel_size: 3}\n  - norm\n  - global_avgpool\n  - norm\n"
    )
    result = cli("check", str(spec))
    assert result.code == 0
    notes = [line for line in result.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, result.err  # only the (C, H, W) one; the (C,) one is unambiguous
    assert "cnn.yaml:7:5: layers[1].norm: 1: norm 'layer' on (4, 6, 6)" in notes[0]
    assert "layer(channels)" in notes[0] and "layer(sample)" in notes[0]
    for explicit in ("layer(channels)", "layer(sample)"):
        quiet = cli("check", str(spec), "--set", f"defaults.norm={explicit}")
        assert quiet.code == 0 and "note:" not in quiet.err
    import json

    as_json = json.loads(cli("check", str(spec), "--json").out)
    assert [(n["path"], n["line"]) for n in as_json["notes"]] == [("layers[1].norm", 7)]


def test_norm_axes_change_parameters_as_documented() -> None:
    base = "specc: 1\nname: n\ninputs: {x: {shape: [96, 56, 56]}}\nlayers: [norm]\n"
    sample = check_text(base, sets=("defaults.norm=layer",))
    channels = check_text(base, sets=("defaults.norm=layer(channels)",))
    assert sample.params == 2 * 96 * 56 * 56 and channels.params == 2 * 96


# ---- multi-output ops in a spec ---------------------------------------------------------------

GLU = """specc: 1
name: glu
inputs: {x: {shape: [seq, 8]}}
dims: {seq: 16}
layers:
  - linear: 16
  - chunk: {chunks: 2, dim: -1, name: halves}
  - sigmoid: {from: "halves:1"}
  - mul: {from: ["halves:0", -1]}
  - slice: {start: 1, name: tail}
"""


def test_split_outputs_are_read_by_index() -> None:
    model = build_model(check_text(GLU)).eval()
    assert model.graph.output_types()["output"].shape == ("seq-1", 8)
    x = torch.randn(2, 5, 8)
    h = model.get_submodule("0")(x)
    torch.testing.assert_close(model(x), (h[..., :8] * torch.sigmoid(h[..., 8:]))[:, 1:])
    with pytest.raises(SpecError, match="'halves' has 2 output"):
        check_text(GLU.replace('"halves:1"', '"halves:2"'))


# ---- ONNX export (torchscript, opset 17) + onnxruntime parity ------------------------------------

ONNX: dict[str, tuple[str, dict[str, Any], tuple[Any, ...]]] = {
    "permute": ("permute", {"dims": [1, 2, 0]}, (3, 4, 5)),
    "transpose_seq": ("transpose", {"dim0": 0, "dim1": 1}, ("T", 6)),
    "slice_seq": ("slice", {"start": 1, "stop": -1, "step": 2}, ("T", 6)),
    "slice_tail": ("slice", {"start": -3}, ("T", 6)),
    "split": ("split", {"split_size_or_sections": [2, 4], "dim": -1}, ("T", 6)),
    "chunk": ("chunk", {"chunks": 3, "dim": 0}, (6, 4, 4)),
    "upsample_nearest_2d": ("upsample", {"scale_factor": 2}, (3, 5, 6)),
    "upsample_bilinear_size": ("upsample", {"size": [7, 9], "mode": "bilinear"}, (3, 5, 6)),
    "upsample_bilinear_align": (
        "upsample",
        {"scale_factor": 2, "mode": "bilinear", "align_corners": True},
        (3, 5, 6),
    ),
    "upsample_linear_seq": ("upsample", {"scale_factor": 2, "mode": "linear"}, (3, "T")),
    "upsample_nearest_1d_seq": ("upsample", {"scale_factor": 3}, (3, "T")),
    "conv_transpose2d": (
        "conv_transpose2d",
        {
            "out_channels": 6,
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "output_padding": 1,
            "groups": 2,
            "dilation": 2,
        },
        (4, 5, 5),
    ),
    "conv_transpose1d_seq": (
        "conv_transpose1d",
        {"out_channels": 3, "kernel_size": 4, "stride": 2, "padding": 1},
        (2, "T"),
    ),
    "pixel_shuffle": ("pixel_shuffle", {"upscale_factor": 2}, (8, 3, 4)),
    "pixel_unshuffle": ("pixel_unshuffle", {"downscale_factor": 2}, (2, 4, 6)),
    "parameter": ("parameter", {"shape": [2, 6], "batched": True}, ("T", 6)),
    "scale_channels": ("scale", {}, (4, 3, 3)),
    "scale_last_seq": ("scale", {"dim": -1}, ("T", 6)),
    "layer_channels": ("norm", {"kind": "layer(channels)", "eps": 1e-6}, (5, 3, 4)),
    "rms_channels_seq": ("norm", {"kind": "rms(channels)"}, (5, "T")),
    "layer_last": ("norm", {"kind": "layer(last)"}, (3, 4, 5)),
    "relu6": ("relu6", {}, (3, 7)),
    "hardswish": ("hardswish", {}, (3, 7)),
    "hardsigmoid": ("hardsigmoid", {}, (3, 7)),
    "mish": ("mish", {}, (3, 7)),
    "gelu_tanh": ("gelu_tanh", {}, (3, 7)),
}


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-1.0, 1.0)


def _sample(shape: tuple[Any, ...], batch: int, t: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn([batch, *(t if d == "T" else d for d in shape)], generator=gen) * 3


@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1")
@pytest.mark.parametrize("case", list(ONNX))
def test_onnx_parity(case: str) -> None:
    import onnxruntime as ort

    op, args, shape = ONNX[case]
    symbolic = [i + 1 for i, d in enumerate(shape) if d == "T"]
    module = build(op, args, T_(tuple("seq" if d == "T" else d for d in shape))).eval()
    _randomise(module)
    gen = torch.Generator().manual_seed(0)
    example = _sample(shape, 2, 8, gen)
    with torch.no_grad():
        ref = module(example)
    outs = [f"out{i}" for i in range(len(ref) if isinstance(ref, tuple) else 1)]
    axes = {"x": {0: "batch", **{i: "T" for i in symbolic}}, **{o: {0: "batch"} for o in outs}}
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=outs,
            dynamic_axes=axes,
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        for t in (5, 11) if symbolic else (0,):
            feed = _sample(shape, batch, t, gen)
            with torch.no_grad():
                want = module(feed)
            wants = want if isinstance(want, tuple) else (want,)
            got = session.run(None, {"x": feed.numpy()})
            assert len(got) == len(wants)
            for g, w in zip(got, wants, strict=True):
                np.testing.assert_allclose(
                    g, w.detach().numpy(), atol=1e-5, rtol=1e-4, err_msg=f"{case} B={batch} T={t}"
                )
