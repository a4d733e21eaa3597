"""Every bundled spec exports to ONNX and matches PyTorch in onnxruntime (reduced sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from specc.api import check
from specc.errors import SpecError
from specc.export import ExportOptions, export_model

ROOT = Path(__file__).resolve().parents[2]
MAX_PARAMS = 8_000_000  # googlenet at its tiny scale: 5.6M (only the input shrinks)

# Spec files that other stages add land here automatically; two inline specs keep the contract
# covered (a CNN with residual/BN and a sequence model with a symbolic axis) even before they do.
INLINE = {
    "inline_cnn": """specc: 1
name: inline_cnn
inputs: {image: {shape: [3, 16, 16]}}
labels: [a, b, c, d]
layers:
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1, name: stem}
  - norm
  - act
  - residual:
      - conv2d: {out_channels: 16, kernel_size: 3, stride: 2, padding: 1, bias: false}
      - norm
    then: act
    name: block
  - global_avgpool
  - linear: {out_features: 4, name: head}
""",
    "inline_seq": """specc: 1
name: inline_seq
inputs: {x: {shape: [4, seq]}}
dims: {seq: 32}
layers:
  - conv1d: {out_channels: 8, kernel_size: 3, padding: 1}
  - act
  - conv1d: {out_channels: 8, kernel_size: 1}
  - global_avgpool
  - linear: {out_features: 3}
""",
}


def _cases() -> list[object]:
    files = sorted((ROOT / "specs").glob("*.yaml"))
    return [pytest.param(f, id=f.stem) for f in files] + [pytest.param(k, id=k) for k in INLINE]


def _graph(case: Path | str, tmp_path: Path):  # type: ignore[no-untyped-def]
    if isinstance(case, str):
        path = tmp_path / f"{case}.yaml"
        path.write_text(INLINE[case])
    else:
        path = case
    from specc.lang.document import load_spec

    try:
        doc = load_spec(path, (), None)
    except SpecError as e:
        pytest.skip(f"spec does not load yet: {str(e).splitlines()[0]}")
    scale = "tiny" if "tiny" in doc.spec.scales else None
    graph = check(path, (), scale)
    if graph.params > MAX_PARAMS:
        pytest.skip(
            f"{graph.params:,} parameters at scale {scale or '(default; no tiny scale)'}, over {MAX_PARAMS:,}"
        )
    return graph


@pytest.mark.parametrize("case", _cases())
def test_spec_exports_with_parity(case: Path | str, tmp_path: Path) -> None:
    from specc.nn import build

    graph = _graph(case, tmp_path)
    model = build(graph)
    report = export_model(model, graph, tmp_path / "m.onnx", ExportOptions())
    assert report.ok
    assert (tmp_path / "m.onnx.sha256").is_file() and (tmp_path / "m.onnx.json").is_file()
    assert {c.sizes.batch for c in report.parity} == {1, 2, 7}
    if any(isinstance(d, str) for t in graph.inputs.values() for d in t.shape):
        assert len({tuple(c.sizes.symbols.values()) for c in report.parity}) == 2
