"""Golden invalid specs: each ``invalid/NAME.yaml`` fails ``specc check`` with exactly the lines in
``invalid/NAME.expected`` (every error of the file, with its line and column)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, run_cli

INVALID = Path(__file__).parent / "invalid"
CASES = sorted(INVALID.glob("*.yaml"))


@pytest.mark.parametrize("spec", CASES, ids=[p.stem for p in CASES])
def test_golden_error(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = run_cli("check", str(spec.relative_to(ROOT)))
    assert result.code == 2
    assert result.out == ""
    assert result.err == spec.with_suffix(".expected").read_text()


def test_every_case_has_expectation() -> None:
    assert len(CASES) >= 10
    for spec in CASES:
        assert spec.with_suffix(".expected").is_file(), spec


def test_json_errors_are_located(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.chdir(ROOT)
    result = run_cli("check", "--json", "tests/lang/invalid/unknown_op.yaml")
    assert result.code == 2
    report = json.loads(result.out)
    assert report["ok"] is False
    assert [(e["line"], e["col"]) for e in report["errors"]] == [(6, 5), (7, 13)]
    assert report["errors"][0]["message"] == "unknown op or block 'reluu' (did you mean 'relu'?)"
