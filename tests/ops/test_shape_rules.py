"""Shape rules of the core ops against hand-computed shapes, parameter counts and MACs."""

from __future__ import annotations

from typing import Any

import pytest

from specc.ops import OPS, InferContext, ShapeMismatch, TensorType


def run(op: str, args: dict[str, Any], *shapes: tuple[Any, ...]) -> tuple[tuple[Any, ...], int, int]:
    inferred = OPS[op].model_validate(args).infer([TensorType(s) for s in shapes], InferContext({"seq": 10}))
    return inferred.outputs[0].shape, inferred.params, inferred.macs


@pytest.mark.parametrize(
    ("op", "args", "shapes", "out", "params", "macs"),
    [
        ("linear", {"out_features": 10}, [(784,)], (10,), 7850, 7840),
        ("linear", {"out_features": 4, "bias": False}, [("seq", 8)], ("seq", 4), 32, 320),
        (
            "conv2d",
            {"out_channels": 6, "kernel_size": 5, "padding": 2},
            [(1, 28, 28)],
            (6, 28, 28),
            156,
            117600,
        ),
        (
            "conv2d",
            {"out_channels": 64, "kernel_size": 7, "stride": 2, "padding": 3, "bias": False},
            [(3, 224, 224)],
            (64, 112, 112),
            9408,
            118013952,
        ),
        (
            "conv2d",
            {"out_channels": 8, "kernel_size": 3, "padding": "same", "dilation": 2},
            [(4, 9, 9)],
            (8, 9, 9),
            296,
            8 * 81 * 36,
        ),
        (
            "conv2d",
            {"out_channels": 8, "kernel_size": 3, "groups": 4},
            [(8, 5, 5)],
            (8, 3, 3),
            152,
            8 * 9 * 18,
        ),
        (
            "conv2d",
            {"out_channels": 2, "kernel_size": [1, 3], "stride": [1, 2]},
            [(1, 4, 9)],
            (2, 4, 4),
            8,
            2 * 16 * 3,
        ),
        (
            "conv1d",
            {"out_channels": 5, "kernel_size": 3, "padding": "same"},
            [(2, "seq")],
            (5, "seq"),
            35,
            5 * 10 * 6,
        ),
        ("conv1d", {"out_channels": 5, "kernel_size": 3}, [(2, 12)], (5, 10), 35, 300),
        ("maxpool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, [(64, 112, 112)], (64, 56, 56), 0, 0),
        (
            "maxpool2d",
            {"kernel_size": 3, "stride": 2, "ceil_mode": True},
            [(64, 112, 112)],
            (64, 56, 56),
            0,
            0,
        ),
        ("maxpool2d", {"kernel_size": 2, "ceil_mode": True}, [(3, 7, 7)], (3, 4, 4), 0, 0),
        ("avgpool2d", {"kernel_size": 2}, [(6, 28, 28)], (6, 14, 14), 0, 0),
        ("maxpool1d", {"kernel_size": 2}, [(3, 9)], (3, 4), 0, 0),
        ("avgpool1d", {"kernel_size": 3, "stride": 1}, [(3, 9)], (3, 7), 0, 0),
        ("adaptive_avgpool2d", {"output_size": [6, 6]}, [(256, 13, 13)], (256, 6, 6), 0, 0),
        ("adaptive_maxpool2d", {"output_size": 1}, [(8, 5, 5)], (8, 1, 1), 0, 0),
        ("adaptive_avgpool1d", {"output_size": 1}, [(8, 5)], (8, 1), 0, 0),
        ("global_avgpool", {}, [(512, 7, 7)], (512,), 0, 0),
        ("global_maxpool", {}, [(16, 9)], (16,), 0, 0),
        ("norm", {"kind": "batch"}, [(64, 8, 8)], (64, 8, 8), 128, 8192),
        ("norm", {"kind": "batch"}, [(120,)], (120,), 240, 240),
        ("norm", {"kind": "layer"}, [(6, 4, 4)], (6, 4, 4), 192, 192),
        ("norm", {"kind": "layer"}, [("seq", 16)], ("seq", 16), 32, 320),
        ("norm", {"kind": "rms"}, [("seq", 16)], ("seq", 16), 16, 320),
        ("norm", {"kind": "group"}, [(48, 4, 4)], (48, 4, 4), 96, 1536),
        ("norm", {"kind": "group(4)"}, [(8, 4, 4)], (8, 4, 4), 16, 256),
        ("norm", {"kind": "instance"}, [(8, 4, 4)], (8, 4, 4), 16, 256),
        ("norm", {"kind": "none"}, [(8, 4, 4)], (8, 4, 4), 0, 0),
        ("relu", {}, [(3, 4)], (3, 4), 0, 0),
        ("leaky_relu", {"negative_slope": 0.2}, [(3,)], (3,), 0, 0),
        ("softmax", {"dim": 0}, [(10,)], (10,), 0, 0),
        ("act", {"fn": "gelu", "approximate": "tanh"}, [(5,)], (5,), 0, 0),
        ("dropout", {"p": 0.1}, [(5, 2)], (5, 2), 0, 0),
        ("flatten", {}, [(16, 5, 5)], (400,), 0, 0),
        ("flatten", {"start_dim": 1}, [(16, 5, 5)], (16, 25), 0, 0),
        ("reshape", {"shape": [16, -1]}, [(400,)], (16, 25), 0, 0),
        ("add", {}, [(4, 8, 8), (4, 8, 8)], (4, 8, 8), 0, 256),
        ("mul", {}, [(4, 8, 8), (4, 1, 1)], (4, 8, 8), 0, 256),
        ("concat", {"dim": 0}, [(4, 8, 8), (6, 8, 8), (2, 8, 8)], (12, 8, 8), 0, 0),
        ("concat", {"dim": -1}, [("seq", 3), ("seq", 5)], ("seq", 8), 0, 0),
        ("projection", {"norm": "batch"}, [(64, 56, 56), (128, 28, 28)], (128, 28, 28), 8448, 128 * 784 * 64),
        ("projection", {}, [(8,), (16,)], (16,), 144, 128),
    ],
)
def test_shape_rule(
    op: str, args: dict[str, Any], shapes: list[tuple[Any, ...]], out: tuple[Any, ...], params: int, macs: int
) -> None:
    assert run(op, args, *shapes) == (out, params, macs)


@pytest.mark.parametrize(
    ("op", "args", "shapes", "message"),
    [
        ("conv2d", {"out_channels": 6, "kernel_size": 5}, [(400,)], "expects a 3-d input"),
        ("conv2d", {"out_channels": 6, "kernel_size": 7}, [(1, 4, 4)], "does not fit an axis of 4"),
        (
            "conv2d",
            {"out_channels": 6, "kernel_size": 3, "groups": 3},
            [(4, 8, 8)],
            "not divisible by groups",
        ),
        ("conv2d", {"out_channels": 6, "kernel_size": 2, "padding": "same"}, [(4, 8, 8)], "asymmetric"),
        ("linear", {"out_features": 3}, [("seq",)], "symbolic axis 'seq'"),
        ("add", {}, [(4, 8, 8), (5, 8, 8)], "do not match"),
        ("concat", {}, [(4, 8, 8), (4, 9, 8)], "differ on axis 1"),
        ("reshape", {"shape": [7, -1]}, [(400,)], "cannot reshape"),
        ("norm", {"kind": "instance"}, [(8,)], "instance norm needs"),
        ("norm", {"kind": "group(3)"}, [(8, 2, 2)], "divisible by 3"),
        ("maxpool2d", {"kernel_size": 2, "padding": 2}, [(1, 8, 8)], "at most half"),
        ("projection", {}, [(8, 5, 5), (8, 3, 4)], "no 1x1 strided projection"),
        ("softmax", {"dim": 3}, [(10,)], "out of range"),
    ],
)
def test_shape_rule_errors(
    op: str, args: dict[str, Any], shapes: list[tuple[Any, ...]], message: str
) -> None:
    with pytest.raises(ShapeMismatch, match=None) as err:
        run(op, args, *shapes)
    assert message in str(err.value)


def test_arguments_are_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match='padding "same" needs stride 1'):
        OPS["conv2d"].model_validate({"out_channels": 4, "kernel_size": 3, "padding": "same", "stride": 2})
    with pytest.raises(ValidationError, match="negative_slope does not apply to relu"):
        OPS["relu"].model_validate({"negative_slope": 0.1})
    with pytest.raises(ValidationError, match="unknown norm"):
        OPS["norm"].model_validate({"kind": "batchnorm"})
