"""docs/spec-reference.md is generated from the op docstrings and must be current."""

from __future__ import annotations

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
