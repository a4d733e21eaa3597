"""Every bundled CNN spec: checks, matches its reference network tensor for tensor, and runs.

The ImageNet-sized references are compared on the meta device (no memory, no time); each spec is
then built small (its ``tiny`` scale, which also shrinks the input) on CPU, run forward
and backward, and every node's real output shape is compared with the statically inferred one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SPECS
from reference_models import EXPECTED_PARAMS, REFERENCES, param_shapes

from specc.api import check
from specc.nn import CompiledModel
from specc.nn import build as build_model

# spec -> (scale, --set overrides) that make it small enough for a CPU test; the big specs' `tiny`
# scales also set the input resolution (`res`), so they need no --set
SMALL: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "mlp": (None, ()),
    "lenet": (None, ()),
    "lenet_bn": (None, ()),
    "alexnet": ("tiny", ()),
    "vgg11": ("tiny", ()),
    "vgg16": ("tiny", ()),
    "vgg11_bn": ("tiny", ()),
    "nin": ("tiny", ()),
    "googlenet": ("tiny", ()),
    "resnet18": ("tiny", ()),
    "resnet34": ("tiny", ()),
    "resnet50": ("tiny", ()),
    "densenet121": ("tiny", ()),
    "small_resnet": (None, ()),
    "small_densenet": (None, ()),
    "small_inception": (None, ()),
    "mobilenet_v2": ("tiny", ()),
    "efficientnet_b0": ("tiny", ()),
    "convnext_tiny": ("tiny", ()),
    "vit_b_16": ("tiny", ()),
    "unet": ("tiny", ()),
}
CNN_SPECS = sorted(SMALL)
WITH_REFERENCE = [name for name in CNN_SPECS if name in REFERENCES]
NORM_SPECS = ["small_resnet", "small_densenet", "small_inception", "lenet_bn"]
# references cheap enough to run at a small input for numerical parity (eval mode)
PARITY: dict[str, tuple[int, ...]] = {
    "mlp": (1, 28, 28),
    "lenet": (1, 28, 28),
    "lenet_bn": (1, 28, 28),
    "nin": (1, 96, 96),
    "googlenet": (3, 32, 32),
    "resnet18": (3, 64, 64),
    "resnet50": (3, 64, 64),
    "densenet121": (3, 32, 32),
}


def spec_path(name: str) -> str:
    return str(SPECS / f"{name}.yaml")


def test_every_cnn_spec_is_listed() -> None:
    for name in CNN_SPECS:
        assert (SPECS / f"{name}.yaml").is_file(), name
    assert set(WITH_REFERENCE) == {n for n in EXPECTED_PARAMS if n in SMALL}


@pytest.mark.parametrize("name", CNN_SPECS)
def test_check(cli, name: str) -> None:
    result = cli("check", spec_path(name))
    assert result.code == 0, result.err
    assert f"{name}: ok" in result.out.replace(".yaml", "")


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_matches_reference_on_meta(name: str) -> None:
    model = build_model(spec_path(name), device="meta")
    with torch.device("meta"):
        reference = REFERENCES[name]()
    assert model.graph.params == EXPECTED_PARAMS[name]
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    assert param_shapes(model) == param_shapes(reference)
    assert model.graph.param_shapes() == param_shapes(reference)


def run_and_compare_shapes(model: CompiledModel, batch: int = 2) -> torch.Tensor:
    """Forward with a hook on every node; each real output shape must equal the inferred one."""
    seen: dict[str, list[tuple[int, ...]]] = {}
    hooks = []
    for node in model.graph.nodes:

        def hook(_m: object, _i: object, out: object, path: str = node.path) -> None:
            outs = out if isinstance(out, tuple) else (out,)
            seen[path] = [tuple(t.shape) for t in outs]

        hooks.append(model.get_submodule(node.path).register_forward_hook(hook))
    x = [torch.randn(batch, *t.shape) for t in model.graph.inputs.values()]  # type: ignore[misc]
    try:
        y = model(*x)
    finally:
        for h in hooks:
            h.remove()
    for node in model.graph.nodes:
        if getattr(model.get_submodule(node.path), "passthrough", False):
            assert node.outputs == [model.graph.type_of(node.inputs[0])], node.path  # aliased, never called
            continue
        assert seen[node.path] == [(batch, *t.shape) for t in node.outputs], node.path
    assert isinstance(y, torch.Tensor)
    return y


@pytest.mark.parametrize("name", CNN_SPECS)
def test_builds_small_runs_forward_backward(name: str) -> None:
    scale, sets = SMALL[name]
    model = build_model(spec_path(name), scale=scale, sets=sets)
    assert sum(p.numel() for p in model.parameters()) == model.graph.params
    assert param_shapes(model) == model.graph.param_shapes()
    y = run_and_compare_shapes(model)
    (out_type,) = model.graph.output_types().values()
    assert y.shape == (2, *out_type.shape)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", [n for n in WITH_REFERENCE if SMALL[n][0] == "tiny"])
def test_tiny_scale_sets_the_resolution(name: str) -> None:
    """`res` defaults to the reference resolution; `tiny` shrinks it, and --set still wins."""
    (default,) = check(spec_path(name)).inputs.values()
    (tiny,) = check(spec_path(name), (), "tiny").inputs.values()
    (custom,) = check(spec_path(name), ("res=96",), "tiny").inputs.values()
    assert default.shape[1:] == (224, 224)
    assert tiny.shape[0] == custom.shape[0] == default.shape[0]
    assert tiny.shape[1] == tiny.shape[2] < 224 and custom.shape[1:] == (96, 96)


@pytest.mark.parametrize("norm", ["group", "layer", "instance", "none"])
@pytest.mark.parametrize("name", NORM_SPECS)
def test_norm_is_one_word(cli, name: str, norm: str) -> None:
    sets = (f"defaults.norm={norm}",)
    if name == "lenet_bn" and norm == "instance":
        result = cli("check", spec_path(name), "--set", sets[0])  # features have no instances
        assert result.code == 2 and "instance norm needs (C, L) or (C, H, W) input" in result.err
        return
    model = build_model(spec_path(name), sets=sets)
    kinds = {n.op.kind for n in model.graph.nodes if n.op.op_name == "norm"}  # type: ignore[attr-defined]
    assert kinds == {norm}
    expected = {
        "group": torch.nn.GroupNorm,
        "layer": torch.nn.LayerNorm,
        "none": torch.nn.Identity,
        "instance": (torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d),
    }[norm]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, expected) for m in model.modules())  # type: ignore[arg-type]
    run_and_compare_shapes(model).sum().backward()


def test_norm_switch_reaches_projection_shortcuts() -> None:
    model = build_model(
        spec_path("resnet18"), scale="tiny", sets=("inputs.image.shape=[3,64,64]", "defaults.norm=group")
    )
    assert isinstance(model.get_submodule("layer2.0.shortcut")[1], torch.nn.GroupNorm)
    run_and_compare_shapes(model).sum().backward()


@pytest.mark.parametrize("name", sorted(PARITY))
def test_numerical_parity_with_reference(name: str) -> None:
    """Copy the reference's weights into the compiled model by position: outputs must agree."""
    shape = PARITY[name]
    torch.manual_seed(0)
    reference = REFERENCES[name]().eval()
    for m in reference.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # non-trivial running statistics
            m.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
            m.running_var.uniform_(0.5, 2.0)  # type: ignore[operator]
            m.weight.data.uniform_(0.5, 1.5)
    model = build_model(spec_path(name), sets=(f"inputs.image.shape={list(shape)}".replace(" ", ""),)).eval()
    ref_state, state = list(reference.state_dict().values()), model.state_dict()
    assert [tuple(t.shape) for t in ref_state] == [tuple(t.shape) for t in state.values()]
    model.load_state_dict(dict(zip(state, ref_state, strict=True)))
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
