"""CompiledModel's public surface for code that changes a built model (sync BatchNorm, FSDP)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import specc
from specc.api import check_text

SPEC = """\
specc: 1
name: bn
inputs: {x: {shape: [3, 6, 6]}}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, bias: false}
  - norm: {kind: batch, name: bn}
  - global_avgpool
  - linear: {out_features: 2, name: out}
outputs: [out]
"""


class Doubled(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 2


def test_replace_module_swaps_the_tree_and_the_forward_plan() -> None:
    model = specc.build(check_text(SPEC))
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    bn = model.get_submodule("bn")
    old = model.replace_module("bn", Doubled(bn))
    assert old is bn and model.get_submodule("bn.inner") is bn
    assert any(isinstance(step.module, Doubled) for step in model.plan)
    assert not any(step.module is bn for step in model.plan)
    assert "bn.inner.running_mean" in model.state_dict()
    # forward runs the new module: the pooled features double, so out = W (2 f) + b
    lin = model.get_submodule("out")
    after = model(x)
    assert torch.allclose(after - lin.bias, 2 * (before - lin.bias), atol=1e-6)
    with pytest.raises(AttributeError):
        model.replace_module("nowhere", nn.Identity())
