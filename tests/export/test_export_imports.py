"""Import hygiene: the runtime and the CLI's export commands do not pull in torch or training code."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys\n{stmt}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_runtime_imports_no_torch_or_training() -> None:
    mods = _modules_after("import specc.runtime, specc.runtime.model, specc.runtime.inputs")
    assert "torch" not in mods
    assert not {m for m in mods if m.startswith(("specc.train", "specc.nn", "specc.export", "specc.data"))}


def test_cli_registration_imports_no_torch() -> None:
    mods = _modules_after("import specc.cli, specc.cli.spec_cmds, specc.cli.export_cmds")
    assert "torch" not in mods and "onnxruntime" not in mods
