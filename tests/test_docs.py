"""docs/spec-reference.md is generated from the op docstrings and must be current."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT


def test_spec_reference_is_current() -> None:
    from specc.docgen import reference

    current = (ROOT / "docs" / "spec-reference.md").read_text()
    assert current == reference(), "run `make docs` to regenerate docs/spec-reference.md"


def test_every_op_documented_with_example() -> None:
    import inspect

    from specc.ops import OPS

    for name, cls in OPS.items():
        doc = inspect.getdoc(cls) or ""
        assert doc.strip(), f"op {name} has no docstring"
        assert "Example::" in doc and f"{name}" in doc.split("Example::")[1], (
            f"op {name} lacks a YAML example"
        )


def test_std_library_section_is_current() -> None:
    from specc.docgen import LANGUAGE, language_text, stdlib_section
    from specc.lang.stdlib import library_names

    current = LANGUAGE.read_text()
    assert current == language_text(current), "run `make docs` to regenerate the std: section"
    section = stdlib_section()
    for name in library_names():
        assert f"### `std:{name}`" in section


def test_language_examples_check(tmp_path: Path) -> None:
    """The MobileNetV2 blocks in docs/spec-language.md are valid and do what the text says."""
    import re

    from specc.api import check_text

    text = (ROOT / "docs" / "spec-language.md").read_text()
    blocks = re.findall(r"```yaml\n(blocks:\n  conv_bn_act:.*?)```", text, re.S)
    assert len(blocks) == 1
    spec = "specc: 1\nname: doc\ninputs: {image: {shape: [3, 32, 32]}}\n" + blocks[0]
    nodes = {n.path for n in check_text(spec).nodes}
    assert "3.add" in nodes and "2.add" not in nodes and "1.0.0" not in nodes
    (variant,) = re.findall(
        r"```yaml\n(  inverted_residual:\n    params: \{out: int, stride: 1, expand: 6\}.*?)```", text, re.S
    )
    helper = spec.split("  inverted_residual:", 1)[0]  # the header and conv_bn_act
    layers = "layers:" + spec.split("\nlayers:", 1)[1]
    spec = helper + variant + layers
    nodes = {n.path for n in check_text(spec).nodes}
    assert "3.4" in nodes and "2.4" not in nodes and "1.0.0" not in nodes
