"""docs/spec-language.md's patterns written from the ops (Swin window attention, ShuffleNetV2's unit,
a MobileNetV3 block) equal hand-written PyTorch modules of the reference layouts: the same parameter
shapes in the same order and, with the weights copied, the same outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from torch import nn

from specc.api import check_text
from specc.nn import build


def example(marker: str) -> str:
    text = (ROOT / "docs" / "spec-language.md").read_text()
    return text.split(f"<!-- {marker} -->\n```yaml\n", 1)[1].split("```", 1)[0]


def copy_in_order(model: nn.Module, ref: nn.Module) -> None:
    """Parameters and buffers by position; shapes must agree one by one."""
    ours, theirs = list(model.state_dict().values()), ref.state_dict()
    assert [tuple(t.shape) for t in ours] == [tuple(t.shape) for t in theirs.values()]
    ref.load_state_dict(dict(zip(theirs, ours, strict=True)))


def randomise_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode tests them."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data = torch.randn(t.shape, generator=g) * 0.2 + (1.0 if t is m.weight else 0.0)
            m.running_var.data = torch.rand(m.running_var.shape, generator=g) + 0.5


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5


# --- Swin window attention -----------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Swin's W-MSA (without the relative-position bias): partition, attention per window, reverse."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        win = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        n = win.shape[1]
        qkv = self.qkv(win).reshape(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = self.proj((attn @ v).transpose(1, 2).reshape(-1, n, c))
        return out.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@pytest.mark.parametrize(("scale", "heads", "window"), [(None, 3, 7), ("tiny", 2, 4)])
def test_swin_window_attention_equals_reference(scale: str | None, heads: int, window: int) -> None:
    graph = check_text(example("swin-example"), "swin.yaml", scale=scale)
    model = build(graph, seed=0).eval()
    ref = nn.Sequential(SwinBlock(96, heads, window), SwinBlock(96, heads, window)).eval()
    copy_in_order(model, ref)
    x = torch.randn(2, 56, 56, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(model(x), ref(x))
        # the windows matter: attention over the whole map (one window) gives another result
        whole = build(check_text(example("swin-example"), "s.yaml", sets=["window=56"], scale=scale), seed=0)
        whole.load_state_dict(model.state_dict())
        assert (whole.eval()(x) - model(x)).abs().max() > 1e-3


# --- ShuffleNetV2 --------------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual at stride 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.branch2 = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)


def test_shufflenet_unit_equals_reference() -> None:
    model = build(check_text(example("shufflenet-example"), "shuffle.yaml"), seed=0).eval()
    ref = nn.Sequential(*(ShuffleUnit(116) for _ in range(3))).eval()
    randomise_norms(model)
    copy_in_order(model, ref)
    x = torch.randn(2, 116, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(model(x), ref(x))
        # the shuffle matters: without it the two halves never mix
        assert (channel_shuffle(ref(x), 2) - ref(x)).abs().max() > 1e-3


# --- MobileNetV3 ---------------------------------------------------------------------------------


def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn(
    cin: int, cout: int, k: int, stride: int, groups: int, act: type[nn.Module] | None
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
    ]
    return nn.Sequential(*layers, *([act()] if act else []))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class Bneck(nn.Module):
    """torchvision's MobileNetV3 InvertedResidual for one row of the table."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        a = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = [conv_bn(cin, exp, 1, 1, 1, a)] if exp != cin else []
        layers.append(conv_bn(exp, exp, k, stride, exp, a))
        layers += [SqueezeExcitation(exp, make_divisible(exp // 4))] if se else []
        layers.append(conv_bn(exp, cout, 1, 1, 1, None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def test_mobilenet_v3_blocks_equal_reference() -> None:
    model = build(check_text(example("mobilenet-v3-example"), "mbv3.yaml"), seed=0).eval()
    rows = [  # torchvision's MobileNetV3-Large table, rows 2-5 and 7: in, kernel, expanded, out, SE, act, stride
        (16, 3, 64, 24, False, "RE", 2),
        (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 72, 40, True, "RE", 2),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2),
    ]
    ref = nn.Sequential(*(Bneck(*row) for row in rows)).eval()
    assert make_divisible(72 // 4) == 24 and make_divisible(120 // 4) == 32  # the 0.9 rule is used
    randomise_norms(model)
    copy_in_order(model, ref)
    x = torch.randn(2, 16, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(model(x), ref(x))
