"""The builder contract, over every registered op and over the compiled model.

Each op gets a minimal example (arguments + per-sample input types). Building it must give a
module whose real output shapes and dtypes equal the inferred ones, whose parameter count equals
the static one and whose parameters come in the order ``Inferred.param_shapes`` lists. An op
registered without an example here fails :func:`test_op_contract`, so a new op must add one.
"""

from __future__ import annotations

import math
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SPECS, write_spec

from specc.api import check_text
from specc.errors import BuildError
from specc.nn import build as build_model
from specc.ops import OPS, InferContext, TensorType

F, INT, B = "float32", "int64", "bool"
Case = tuple[dict[str, Any], list[tuple[tuple[int, ...], str]]]

# op -> one or more (arguments, [(per-sample shape, dtype), ...]) examples
EXAMPLES: dict[str, list[Case]] = {
    "act": [({}, [((3, 4), F)]), ({"fn": "leaky_relu", "negative_slope": 0.2}, [((5,), F)])],
    "relu": [({}, [((3, 4), F)])],
    "leaky_relu": [({"negative_slope": 0.1}, [((6,), F)])],
    "elu": [({"alpha": 0.5}, [((6,), F)])],
    "gelu": [({"approximate": "tanh"}, [((6,), F)])],
    "silu": [({}, [((2, 3, 3), F)])],
    "sigmoid": [({}, [((6,), F)])],
    "tanh": [({}, [((6,), F)])],
    "softmax": [({"dim": 0}, [((4, 6), F)])],
    "identity": [({}, [((6,), F)])],
    "conv2d": [
        ({"out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1}, [((4, 9, 9), F)]),
        (
            {"out_channels": 4, "kernel_size": 3, "padding": "same", "groups": 2, "bias": False},
            [((4, 5, 5), F)],
        ),
    ],
    "conv1d": [({"out_channels": 5, "kernel_size": 3, "dilation": 2}, [((2, 12), F)])],
    "linear": [({"out_features": 7}, [((5,), F)]), ({"out_features": 3, "bias": False}, [((4, 5), F)])],
    "add": [({}, [((4, 3, 3), F), ((4, 3, 3), F)])],
    "mul": [({}, [((4, 3, 3), F), ((4, 1, 1), F)])],
    "concat": [({"dim": 0}, [((2, 3, 3), F), ((5, 3, 3), F)]), ({"dim": -1}, [((2, 3), F), ((2, 4), F)])],
    "dropout": [({"p": 0.3}, [((6,), F)])],
    "drop_path": [({"p": 0.2}, [((4, 3, 3), F)])],
    "flatten": [({}, [((2, 3, 4), F)]), ({"start_dim": 1}, [((2, 3, 4), F)])],
    "reshape": [({"shape": [4, -1]}, [((2, 3, 4), F)])],
    "norm": [
        ({"kind": "batch"}, [((4, 3, 3), F)]),
        ({"kind": "batch"}, [((6,), F)]),
        ({"kind": "layer"}, [((5, 8), F)]),
        ({"kind": "group(2)"}, [((4, 3, 3), F)]),
        ({"kind": "instance"}, [((4, 3, 3), F)]),
        ({"kind": "rms"}, [((5, 8), F)]),
        ({"kind": "none"}, [((4, 3, 3), F)]),
        ({"kind": "layer(channels)"}, [((4, 3, 3), F)]),
        ({"kind": "rms(channels)", "affine": False}, [((4, 5), F)]),
        ({"kind": "layer(last)"}, [((3, 3, 4), F)]),
        ({"kind": "rms(sample)"}, [((4, 5), F)]),
    ],
    "maxpool2d": [({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, [((2, 7, 7), F)])],
    "avgpool2d": [({"kernel_size": 2}, [((2, 6, 6), F)])],
    "maxpool1d": [({"kernel_size": 2}, [((2, 9), F)])],
    "avgpool1d": [({"kernel_size": 3, "stride": 1}, [((2, 9), F)])],
    "adaptive_avgpool2d": [({"output_size": [2, 3]}, [((2, 7, 7), F)])],
    "adaptive_maxpool2d": [({"output_size": 1}, [((2, 5, 5), F)])],
    "adaptive_avgpool1d": [({"output_size": 2}, [((2, 7), F)])],
    "global_avgpool": [({}, [((3, 4, 4), F)])],
    "global_maxpool": [({}, [((3, 5), F)])],
    "projection": [
        ({}, [((4, 8, 8), F), ((8, 4, 4), F)]),
        ({"norm": "group"}, [((4, 8, 8), F), ((6, 8, 8), F)]),
        ({}, [((4, 8, 8), F), ((4, 8, 8), F)]),
        ({}, [((5,), F), ((3,), F)]),
    ],
    "dot_product_attention": [
        ({}, [((5, 8), F)]),
        ({"causal": True}, [((5, 8), F), ((7, 8), F), ((7, 6), F), ((7,), B)]),
    ],
    "additive_attention": [({"num_hiddens": 6}, [((5, 8), F), ((7, 4), F), ((7,), B)])],
    "multihead_attention": [
        ({"num_heads": 2}, [((5, 8), F)]),
        ({"num_heads": 2, "qkv": "separate", "causal": True}, [((5, 8), F), ((7, 6), F), ((7,), B)]),
    ],
    "embedding": [({"num_embeddings": 11, "embedding_dim": 4, "padding_idx": 0}, [((5,), INT)])],
    "positional_encoding": [({}, [((5, 8), F)]), ({"kind": "learned", "max_len": 16}, [((5, 8), F)])],
    "rnn": [({"hidden_size": 6}, [((5, 3), F)])],
    "gru": [({"hidden_size": 6, "num_layers": 2, "output": "both"}, [((5, 3), F), ((2, 6), F)])],
    "lstm": [({"hidden_size": 4, "bidirectional": True, "output": "state"}, [((5, 3), F)])],
    "select": [({"index": -1}, [((5, 3), F)]), ({"index": 0, "dim": 1}, [((5, 3), INT)])],
    "broadcast": [({"dim": 0}, [((6,), F), ((5, 4), F)])],
    "relu6": [({}, [((6,), F)])],
    "gelu_tanh": [({}, [((6,), F)])],
    "mish": [({}, [((2, 3, 3), F)])],
    "hardswish": [({}, [((6,), F)])],
    "hardsigmoid": [({}, [((6,), F)])],
    "permute": [({"dims": [1, 2, 0]}, [((2, 3, 4), F)]), ({"dims": [1, 0]}, [((5, 3), INT)])],
    "transpose": [({"dim0": 0, "dim1": -1}, [((2, 3, 4), F)])],
    "slice": [
        ({"dim": 1, "start": 1, "stop": -1, "step": 2}, [((2, 7, 3), F)]),
        ({"start": -2}, [((5,), B)]),
    ],
    "split": [({"split_size_or_sections": [1, 3], "dim": 0}, [((4, 3, 3), F)])],
    "chunk": [({"chunks": 3, "dim": -1}, [((2, 7), F)])],
    "upsample": [
        ({"scale_factor": 2}, [((2, 3, 4), F)]),
        ({"size": 9, "mode": "linear", "align_corners": True}, [((2, 5), F)]),
    ],
    "conv_transpose2d": [
        (
            {"out_channels": 4, "kernel_size": 3, "stride": 2, "output_padding": 1, "groups": 2},
            [((4, 5, 5), F)],
        )
    ],
    "conv_transpose1d": [({"out_channels": 3, "kernel_size": 2, "stride": 2, "bias": False}, [((2, 6), F)])],
    "pixel_shuffle": [({"upscale_factor": 2}, [((8, 3, 3), F)])],
    "pixel_unshuffle": [({"downscale_factor": 2}, [((2, 4, 6), F)])],
    "parameter": [({"shape": [1, 4], "batched": True}, [((5, 4), F)]), ({"shape": [3, 1, 1]}, [((5,), INT)])],
    "scale": [({}, [((4, 3, 3), F)]), ({"dim": -1}, [((5, 6), F)])],
}
DTYPES = {F: torch.float32, INT: torch.int64, B: torch.bool}


def make_input(shape: tuple[int, ...], dtype: str, batch: int) -> torch.Tensor:
    if dtype == INT:
        return torch.randint(0, 5, (batch, *shape))
    if dtype == B:
        mask = torch.rand(batch, *shape) > 0.3
        mask[..., 0] = True  # every sample keeps at least one key
        return mask
    return torch.randn(batch, *shape)


@pytest.mark.parametrize("op_name", sorted(OPS))
def test_op_contract(op_name: str) -> None:
    if op_name not in EXAMPLES:
        pytest.fail(f"op '{op_name}' has no example in tests/nn/test_builder_contract.py EXAMPLES: add one")
    torch.manual_seed(0)
    for args, shapes in EXAMPLES[op_name]:
        op = OPS[op_name].model_validate(args)
        types = [TensorType(s, d) for s, d in shapes]  # type: ignore[arg-type]
        inferred = op.infer(types, InferContext())
        module = op.build(types, inferred).eval()
        out = module(*[make_input(s, d, 3) for s, d in shapes])
        outs = out if isinstance(out, tuple) else (out,)
        where = f"{op_name} {args} on {[str(t) for t in types]}"
        assert len(outs) == len(inferred.outputs), where
        assert [tuple(o.shape) for o in outs] == [(3, *t.shape) for t in inferred.outputs], where
        assert [o.dtype for o in outs] == [DTYPES[t.dtype] for t in inferred.outputs], where
        assert [tuple(p.shape) for p in module.parameters()] == inferred.param_shapes, where
        assert sum(p.numel() for p in module.parameters()) == inferred.params, where


def test_examples_name_only_registered_ops() -> None:
    assert set(EXAMPLES) <= set(OPS), set(EXAMPLES) - set(OPS)


# ---- the compiled model ------------------------------------------------------------------------

CHAIN = """specc: 1
name: chain
inputs: {x: {shape: [16]}}
layers:
  - repeat: 50
    body: [linear: 16]
"""


def test_plan_frees_tensors_after_last_use() -> None:
    model = build_model(check_text(CHAIN))
    live, peak = {0}, 1
    for step in model.plan:
        live |= set(step.outputs)
        peak = max(peak, len(live))
        live -= set(step.free)
    assert peak <= 2 and len(live) == 1

    alive: list[weakref.ref[torch.Tensor]] = []
    counts: list[int] = []

    def hook(_m: object, _i: object, out: torch.Tensor) -> None:
        alive.append(weakref.ref(out))
        counts.append(sum(r() is not None for r in alive))

    for node in model.graph.nodes:
        model.get_submodule(node.path).register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(4, 16))
    assert len(counts) == 50 and max(counts) <= 3  # the input of a step, its output, nothing older


INIT = """specc: 1
name: init
inputs: {x: {shape: [400]}}
defaults: {init: kaiming_normal, bias_init: zeros}
layers:
  - linear: {out_features: 600, name: inherited}
  - linear: {out_features: 600, init: zeros, bias_init: ones, from: x, name: zeros}
  - linear: {out_features: 600, init: ones, from: x, name: ones}
  - linear: {out_features: 600, init: {kind: normal, std: 0.05, mean: 0.5}, from: x, name: normal}
  - linear: {out_features: 600, init: xavier_uniform, from: x, name: xavier}
  - linear: {out_features: 600, init: default, bias_init: default, from: x, name: torch_default}
  - add: {from: [inherited, zeros, ones, normal, xavier, torch_default]}
"""


def test_init_choices_change_weights_as_requested() -> None:
    model = build_model(check_text(INIT))
    w = {
        name: model.get_submodule(name).weight.detach()
        for name in ("inherited", "zeros", "ones", "normal", "xavier", "torch_default")
    }
    b = {name: model.get_submodule(name).bias.detach() for name in w}
    assert w["inherited"].std().item() == pytest.approx(
        math.sqrt(2 / 400), rel=0.03
    )  # kaiming_normal, fan_in
    assert torch.all(b["inherited"] == 0) and torch.all(b["zeros"] == 1)
    assert torch.all(w["zeros"] == 0) and torch.all(w["ones"] == 1)
    assert w["normal"].mean().item() == pytest.approx(0.5, abs=0.002)
    assert w["normal"].std().item() == pytest.approx(0.05, rel=0.03)
    bound = math.sqrt(6 / (400 + 600))
    assert w["xavier"].abs().max().item() <= bound
    assert w["xavier"].std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    torch_bound = 1 / math.sqrt(400)  # nn.Linear's own kaiming_uniform(a=sqrt(5)) and bias
    assert w["torch_default"].abs().max().item() <= torch_bound
    assert w["torch_default"].std().item() == pytest.approx(torch_bound / math.sqrt(3), rel=0.03)
    assert 0 < b["torch_default"].abs().max().item() <= torch_bound


def test_save_writes_safetensors_that_load_back(cli, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    spec = SPECS / "small_resnet.yaml"
    target = tmp_path / "w.safetensors"
    result = cli("build", str(spec), "--save", str(target), "--seed", "3")
    assert result.code == 0, result.err
    loaded = load_file(str(target))
    expected = build_model(str(spec), seed=3).state_dict()
    assert list(loaded) == list(expected) or sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    assert any(k.endswith("running_var") for k in loaded) and "layer1" not in loaded


def test_max_params_refuses_with_estimate(cli) -> None:
    result = cli("build", str(SPECS / "small_resnet.yaml"), "--max-params", "1000")
    assert result.code == 2
    assert "67,898 parameters" in result.err and "1,000" in result.err and "--max-params" in result.err


HUGE = """specc: 1
name: huge
inputs: {x: {shape: [400000]}}
layers:
  - linear: 250000
"""


def test_hundred_billion_parameters_refused_without_allocating(cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, HUGE)
    tracemalloc.start()
    result = cli("build", str(spec))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.code == 2, result.err
    assert "100,000,250,000 parameters" in result.err
    assert peak < 50 * 2**20  # refused from the static count: nothing sized by the spec was allocated
    with pytest.raises(BuildError, match="over the limit"):
        build_model(str(spec))
