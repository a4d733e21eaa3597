"""The CLI's exit: objects alive at exit are frozen out of the cyclic collector (no collection walks
torch's millions of objects after the command has finished) only after the handlers registered
while the command ran, and what the command printed is complete."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, SPECS

PROBE = """
import atexit, gc, sys
atexit.register(lambda: print("registered before main:", gc.get_freeze_count() > 0, flush=True))
import specc.cli
try:
    specc.cli.main(sys.argv[1:])
except SystemExit:
    atexit.register(lambda: print("registered after main:", gc.get_freeze_count() > 0, flush=True))
    raise
"""


def test_cli_freezes_at_exit_after_the_commands_handlers() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "check", str(SPECS / "lenet.yaml"), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    *report, after, before = proc.stdout.splitlines()
    assert json.loads("\n".join(report))["params"] == 61706
    # exit handlers run last-registered first: one a command registers runs before the freeze
    assert after == "registered after main: False"
    assert before == "registered before main: True"
