"""Today's vision specs compute what independent implementations compute (issue 11), at their tiny
scales: MobileNetV2, EfficientNet-B0 and U-Net against the hand-written torchvision-layout references
(tests/reference_models.py), ViT-B/16 and ConvNeXt-T against Hugging Face ``transformers`` (small
random configs built here, no download). Weights are copied from the reference, with every tensor
randomised first (so that a layer scale of 1e-6 or zero-initialised tokens cannot hide a wrong branch);
outputs must agree to 1e-5 of their magnitude. Totals and ordered shapes at full size are checked on the
meta device in tests/test_specs_cnn.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import SPECS
from reference_models import EfficientNet, MobileNetV2, UNet
from torch import Tensor, nn

from specc.api import check
from specc.nn import CompiledModel
from specc.nn import build as build_model

transformers = pytest.importorskip("transformers")  # in the dev extra: CI runs these


def tiny(name: str) -> CompiledModel:
    return build_model(str(SPECS / f"{name}.yaml"), scale="tiny").eval()


def randomise(model: nn.Module) -> None:
    """Every parameter and norm statistic away from its initial value (fixed seed)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "running_var" in name:
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3)


def assert_same_output(
    model: nn.Module, reference: Callable[[Tensor], Tensor], shape: tuple[int, ...]
) -> None:
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert scale > 1e-3  # a meaningful output, not a collapsed one
    assert (got - want).abs().max().item() <= 1e-5 * scale


def copy_by_position(model: nn.Module, reference: nn.Module) -> None:
    """The same tensors in the same order (parameters and buffers): load the reference's by position."""
    ref_state, state = list(reference.state_dict().values()), model.state_dict()
    assert [tuple(t.shape) for t in ref_state] == [tuple(t.shape) for t in state.values()]
    model.load_state_dict(dict(zip(state, ref_state, strict=True)))


# the references at the tiny scales of the specs (see their `scales: tiny:`)
MOBILENET_TINY = [
    (1, 8, 1, 1),
    (6, 8, 2, 2),
    (6, 16, 2, 2),
    (6, 16, 1, 2),
    (6, 24, 2, 1),
    (6, 32, 1, 2),
    (6, 40, 1, 1),
]
EFFICIENTNET_TINY = [
    (1, 3, 1, 16, 8, 1),
    (6, 3, 2, 8, 8, 2),
    (6, 5, 2, 8, 16, 1),
    (6, 3, 2, 16, 16, 2),
    (6, 5, 1, 16, 24, 1),
    (6, 5, 2, 24, 32, 2),
    (6, 3, 1, 32, 40, 1),
]
TORCH_REFERENCES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mobilenet_v2": (lambda: MobileNetV2(10, MOBILENET_TINY, stem=16, last=64), (3, 32, 32)),
    "efficientnet_b0": (lambda: EfficientNet(10, EFFICIENTNET_TINY, last=64), (3, 32, 32)),
    "unet": (lambda: UNet(n_classes=2, width=4), (3, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(TORCH_REFERENCES))
def test_matches_torchvision_layout_reference(name: str) -> None:
    make, shape = TORCH_REFERENCES[name]
    reference = make().eval()
    randomise(reference)
    model = tiny(name)
    copy_by_position(model, reference)
    assert_same_output(model, reference, shape)


def _hf_vit() -> nn.Module:
    from hf_tiny import tiny_vit  # transformers is imported (or the module skipped) above

    return transformers.ViTForImageClassification(tiny_vit(hidden_act="gelu")).eval()


def vit_state_from_hf(hf: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Hugging Face ViT keys (transformers 5) -> the spec's: q/k/v are one fused in_proj, as in torchvision."""
    out = {
        "class_token.weight": hf["vit.embeddings.cls_token"],
        "patches.conv_proj.weight": hf["vit.embeddings.patch_embeddings.projection.weight"],
        "patches.conv_proj.bias": hf["vit.embeddings.patch_embeddings.projection.bias"],
        "pos_embedding.weight": hf["vit.embeddings.position_embeddings"],
        "ln.weight": hf["vit.layernorm.weight"],
        "ln.bias": hf["vit.layernorm.bias"],
        "head.weight": hf["classifier.weight"],
        "head.bias": hf["classifier.bias"],
    }
    for i in range(num_layers):
        src, dst = f"vit.layers.{i}.", f"layers.{i}."
        attn = f"{dst}attn.self_attention."
        for kind in ("weight", "bias"):
            out[f"{attn}in_proj_{kind}"] = torch.cat([hf[f"{src}attention.{p}_proj.{kind}"] for p in "qkv"])
            out[f"{attn}out_proj.{kind}"] = hf[f"{src}attention.o_proj.{kind}"]
            out[f"{dst}attn.ln_1.{kind}"] = hf[f"{src}layernorm_before.{kind}"]
            out[f"{dst}mlp.ln_2.{kind}"] = hf[f"{src}layernorm_after.{kind}"]
            out[f"{dst}mlp.linear_1.{kind}"] = hf[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.linear_2.{kind}"] = hf[f"{src}mlp.fc2.{kind}"]
    return out


def test_vit_matches_transformers() -> None:
    hf = _hf_vit()
    randomise(hf)
    model = tiny("vit_b_16")
    state = vit_state_from_hf(hf.state_dict(), num_layers=2)
    assert sorted(state) == sorted(model.state_dict())
    model.load_state_dict(state)
    assert_same_output(model, lambda x: hf(pixel_values=x).logits, (3, 32, 32))


def convnext_state_from_hf(hf: dict[str, Tensor], depths: list[int]) -> dict[str, Tensor]:
    """Hugging Face ConvNext keys -> the spec's; HF's layer scale (C,) is torchvision's (C, 1, 1)."""
    out = {
        "stem.weight": hf["convnext.embeddings.patch_embeddings.weight"],
        "stem.bias": hf["convnext.embeddings.patch_embeddings.bias"],
        "stem_norm.weight": hf["convnext.embeddings.layernorm.weight"],
        "stem_norm.bias": hf["convnext.embeddings.layernorm.bias"],
        "head_norm.weight": hf["convnext.layernorm.weight"],
        "head_norm.bias": hf["convnext.layernorm.bias"],
        "head.weight": hf["classifier.weight"],
        "head.bias": hf["classifier.bias"],
    }
    for s, depth in enumerate(depths):
        stage = f"convnext.encoder.stages.{s}."
        if s > 0:  # HF downsamples at the start of a stage, torchvision at the end of the previous one
            for kind in ("weight", "bias"):
                out[f"down{s}.norm.{kind}"] = hf[f"{stage}downsampling_layer.0.{kind}"]
                out[f"down{s}.conv.{kind}"] = hf[f"{stage}downsampling_layer.1.{kind}"]
        for j in range(depth):
            src, dst = f"{stage}layers.{j}.", f"stage{s + 1}.{j}."
            out[f"{dst}layer_scale.weight"] = hf[f"{src}layer_scale_parameter"].reshape(-1, 1, 1)
            for kind in ("weight", "bias"):
                out[f"{dst}dwconv.{kind}"] = hf[f"{src}dwconv.{kind}"]
                out[f"{dst}norm.{kind}"] = hf[f"{src}layernorm.{kind}"]
                out[f"{dst}pwconv1.{kind}"] = hf[f"{src}pwconv1.{kind}"]
                out[f"{dst}pwconv2.{kind}"] = hf[f"{src}pwconv2.{kind}"]
    return out


def test_convnext_matches_transformers() -> None:
    depths = [1, 1, 2, 1]
    config = transformers.ConvNextConfig(
        hidden_sizes=[8, 16, 32, 64], depths=depths, num_labels=10, layer_norm_eps=1e-6, image_size=32
    )
    hf = transformers.ConvNextForImageClassification(config).eval()
    randomise(hf)
    model = tiny("convnext_tiny")
    state = convnext_state_from_hf(hf.state_dict(), depths)
    assert sorted(state) == sorted(model.state_dict())
    model.load_state_dict(state)
    assert_same_output(model, lambda x: hf(pixel_values=x).logits, (3, 32, 32))


def test_layer_scale_starts_at_one_in_a_million() -> None:
    model = build_model(str(SPECS / "convnext_tiny.yaml"), scale="tiny")
    gammas = [p for n, p in model.named_parameters() if n.endswith("layer_scale.weight")]
    assert len(gammas) == 5 and all(torch.all(g == 1e-6) for g in gammas)
    vit = build_model(str(SPECS / "vit_b_16.yaml"), scale="tiny")
    assert torch.all(vit.class_token.weight == 0)
    assert vit.pos_embedding.weight.std().item() == pytest.approx(0.02, rel=0.2)


def drop_path_rates(name: str) -> dict[str, float]:
    """The stochastic depth rate of every residual branch of a full-size bundled spec (no torch)."""
    graph = check(str(SPECS / f"{name}.yaml"))
    return {n.path: n.op.p for n in graph.nodes if n.op.op_name == "drop_path"}  # type: ignore[attr-defined]


def test_stochastic_depth_rises_linearly_as_torchvision_sets_it() -> None:
    """torchvision: block k (counted over the whole network) gets p * k / total (EfficientNet,
    p = 0.2) or p * k / (total - 1) (ConvNeXt, p = 0.1); EfficientNet's first block of a stage changes
    the shape, so it has no shortcut and no drop_path."""
    efficientnet = [1, 2, 2, 3, 3, 4, 1]
    want, k = {}, 0
    for s, n in enumerate(efficientnet, start=1):
        for j in range(n):
            if j > 0:
                want[f"stage{s}.{j}.drop_path"] = 0.2 * k / sum(efficientnet)
            k += 1
    assert drop_path_rates("efficientnet_b0") == pytest.approx(want, abs=1e-12)

    convnext = [3, 3, 9, 3]
    want, k = {}, 0
    for s, n in enumerate(convnext, start=1):
        for j in range(n):
            want[f"stage{s}.{j}.drop_path"] = 0.1 * k / (sum(convnext) - 1)
            k += 1
    want.pop("stage1.0.drop_path")  # rate 0: no node
    assert drop_path_rates("convnext_tiny") == pytest.approx(want, abs=1e-12)
    assert drop_path_rates("mobilenet_v2") == {} and drop_path_rates("vit_b_16") == {}


def test_stochastic_depth_drops_whole_samples_of_the_branch_while_training() -> None:
    """The drop_path sits between a ConvNeXt block's scaled branch and the add: in train mode each
    sample's branch is zeroed or scaled by 1 / (1 - p); eval mode leaves it alone."""
    model = build_model(
        str(SPECS / "convnext_tiny.yaml"), scale="tiny", sets=("stochastic_depth_prob=0.5", "d4=2")
    )
    node = next(n for n in model.graph.nodes if n.path == "stage4.1.drop_path")
    assert [r.node for r in node.inputs] == ["stage4.1.scaled"]
    add = next(n for n in model.graph.nodes if n.path == "stage4.1.add")
    assert add.inputs[0].node == "stage4.1.drop_path"
    seen: list[tuple[Tensor, Tensor]] = []
    model.get_submodule(node.path).register_forward_hook(lambda _m, i, out: seen.append((i[0], out)))
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()(x)
        model.eval()(x)
    (branch, dropped), (branch_eval, kept) = seen
    assert node.op.p == pytest.approx(0.5)  # type: ignore[attr-defined]  # 0.5 * 5 / (6 - 1): the last block
    zero = [bool(torch.all(d == 0)) for d in dropped]
    assert 0 < sum(zero) < 16
    for b, d, z in zip(branch, dropped, zero, strict=True):
        if not z:
            torch.testing.assert_close(d, b * 2)
    torch.testing.assert_close(kept, branch_eval)
