"""The bounded fuzz suite (issue 17, point 7): 10,000 generated hostile specs through ``specc check``
in one subprocess capped at 512 MiB of address space, each example under a 2 s CPU deadline
(:mod:`fuzz_check`). Derandomized: the same examples every run."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

MEMORY = 512 << 20
EXAMPLES = 10_000  # ~45 s of CPU on the 2-core CI machine under load (benchmarks/RESULTS.md)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (300, 300))  # a backstop; the per-example deadline is 2 s


def _fuzz(examples: int) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fuzz_check.py")), "--examples", str(examples)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        preexec_fn=_limits,
        timeout=900,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and not result["failures"], json.dumps(result["failures"], indent=1)
    return result


def test_fuzz_smoke() -> None:
    result = _fuzz(60)
    assert result["total"] == 60


@pytest.mark.slow
def test_fuzz_ten_thousand_hostile_specs() -> None:
    result = _fuzz(EXAMPLES)
    assert result["total"] == EXAMPLES, result
    print(json.dumps(result))  # examples per family and seconds, for RESULTS.md
