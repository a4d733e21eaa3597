"""drop_path (stochastic depth): per-sample drop while training, identity in eval and in exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specc.api import check_text
from specc.nn import build
from specc.nn.modules import DropPath

SPEC = """specc: 1
name: drop
inputs: {x: {shape: [4, 6, 6]}}
layers:
  - residual:
      - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
      - drop_path: 0.25
    name: explicit
  - residual: [conv2d: {out_channels: 8, kernel_size: 3, padding: 1, bias: false}, norm]
    drop_path: 0.5
    then: act
    name: option
"""


def test_training_drops_whole_samples_with_probability_p_and_rescales() -> None:
    torch.manual_seed(0)
    module = DropPath(0.3).train()
    x = torch.ones(20_000, 3, 2)
    y = module(x)
    per_sample = y.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one decision per sample ("row" mode)
    kept = per_sample[:, 0] != 0
    assert torch.allclose(per_sample[kept, 0], torch.tensor(1 / 0.7))
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.015  # 0.3 dropped, ~7 sigma margin at n=20,000
    assert abs(y.mean().item() - 1.0) < 0.03  # unbiased: E[y] = x


def test_identity_in_eval_and_at_p_zero() -> None:
    x = torch.randn(5, 3, 4)
    assert torch.equal(DropPath(0.9).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_gradients_flow_through_kept_samples() -> None:
    torch.manual_seed(1)
    x = torch.ones(64, 3, requires_grad=True)
    DropPath(0.5).train()(x).sum().backward()
    assert x.grad is not None and set(x.grad[:, 0].tolist()) <= {0.0, 2.0}


def test_spec_builds_and_exports_as_identity(tmp_path: Path) -> None:
    from specc.export import ExportOptions, export_model

    graph = check_text(SPEC)
    paths = [n.path for n in graph.nodes]
    assert "explicit.1" in paths and "option.drop_path" in paths
    model = build(graph)
    x = torch.randn(3, 4, 6, 6)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)  # nothing random in eval
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        outs = {tuple(model(x).flatten().tolist()) for _ in range(4)}
    assert len(outs) > 1  # training draws a fresh mask each call
    report = export_model(model, graph, tmp_path / "m.onnx", ExportOptions())
    assert report.ok
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert not ops & {"RandomUniform", "RandomUniformLike", "Bernoulli", "RandomNormalLike"}, ops


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_probability_range(p: float) -> None:
    from specc.errors import SpecError

    with pytest.raises(SpecError, match="drop_path"):
        check_text(SPEC.replace("drop_path: 0.5", f"drop_path: {p}"))
