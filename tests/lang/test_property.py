"""Property test: mutated spec text either checks or raises the spec error type with a location.

Nothing else may escape: no KeyError, no RecursionError, no pydantic error, no traceback."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specc.api import check_text
from specc.errors import SpecError

BASE = """specc: 1
name: prop
inputs: {image: {shape: [3, 16, 16]}}
defaults: {norm: batch, activation: relu}
vars: {width: 8, classes: 10}
blocks:
  unit:
    params: {out: int, stride: 1}
    residual:
      - conv2d: {out_channels: $out, kernel_size: 3, stride: $stride, padding: 1, bias: false}
      - norm
      - act
    then: act
layers:
  - conv2d: {out_channels: $width, kernel_size: 3, padding: 1, name: stem}
  - repeat: 2
    body: {unit: {out: $width * ($i + 1)}}
  - parallel: [[conv2d: {out_channels: 4, kernel_size: 1}], [maxpool2d: {kernel_size: 3, stride: 1, padding: 1}]]
  - dense: [norm, act, conv2d: {out_channels: 4, kernel_size: 3, padding: 1}]
    num_layers: 2
  - global_avgpool
  - dropout: 0.5
  - linear: {out_features: $classes, name: logits}
outputs: [logits]
"""

TOKENS = [
    "$width",
    "-1",
    "0",
    "true",
    "1e400",
    ".nan",
    "[",
    "]",
    "{",
    "}",
    ":",
    "- ",
    "\n",
    "  ",
    "&a ",
    "*a",
    "!!python/object:os.system",
    "residual",
    "repeat",
    "from: stem",
    "conv2d",
    "'",
    '"',
    "$",
    "#",
    "?",
    "|",
    ">",
    "@",
    "%",
    "null",
    "~",
    "<<: *a",
    "${",
    "__import__",
    "**",
    "//",
    "999999999999",
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = BASE
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        pos = draw(st.integers(0, len(text)))
        end = min(len(text), pos + draw(st.integers(0, 12)))
        if kind == "delete":
            text = text[:pos] + text[end:]
        elif kind == "insert":
            text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
        elif kind == "replace":
            text = text[:pos] + draw(st.text(max_size=4)) + text[end:]
        else:
            text = text[:pos] + text[pos:end] * 2 + text[end:]
    return text


def test_base_spec_is_valid() -> None:
    graph = check_text(BASE)
    assert graph.params > 0


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated())
def test_mutations_fail_cleanly(text: str) -> None:
    try:
        check_text(text, "prop.yaml")
    except SpecError as exc:
        assert exc.diagnostics, "a spec error must carry diagnostics"
        for d in exc.diagnostics:
            assert d.loc is not None and d.loc.line >= 1, f"error without a line: {d}"
            assert d.message
