"""An export and its variants, manifests and report are published as one step: a failure, Ctrl-C, a
full disk or kill -9 leaves the previous export intact (every file verifies), a publish cut short is
refused by the runtime and finished by the next export, stale work folders are removed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import file_size_limit, run_cli, sigkill_when_ready

from specc.errors import UsageError
from specc.publish import journal_path
from specc.runtime import load


def _files(folder: Path) -> dict[str, str]:
    """Every entry of the export folder (hidden ones included) and its SHA-256."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.iterdir())
    }


def _export(spec: Path, run: Path, out: Path, *flags: str) -> None:
    r = run_cli("export", str(spec), "-w", str(run), "--out", str(out), *flags)
    assert r.code == 0, r.err


def _all_verify(out: Path) -> list[str]:
    """Load the model and each variant next to it (manifests checked); their names."""
    models = sorted(p.name for p in out.parent.glob("*.onnx"))
    for name in models:
        load(out.parent / name)
    return models


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_ctrl_c_and_a_full_disk_leave_the_previous_export(
    wine_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, run = wine_run
    out = tmp_path / "e" / "m.onnx"
    out.parent.mkdir()
    _export(spec, run, out, "--int8")
    before = _files(out.parent)
    assert set(before) == {"m.onnx", "m.onnx.sha256", "m.onnx.json", "m.int8.onnx", "m.int8.onnx.sha256"}

    import specc.export

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # Ctrl-C while the second variant is made
        m.setattr(specc.export, "make_variant", interrupted)
        r = run_cli("export", str(spec), "-w", str(run), "--out", str(out), "--int8", "--optimize")
    assert r.code == 130
    assert _files(out.parent) == before  # no half export, no work folder left

    with file_size_limit(1000):  # the new raw export is bigger: EFBIG, as ENOSPC on a full disk
        r = run_cli("export", str(spec), "-w", str(run), "--out", str(out), "--optimize")
    assert r.code == 2, r.err
    assert f"error: cannot write {out}: File too large" in r.err
    assert "internal error" not in r.err and "Traceback" not in r.err
    assert _files(out.parent) == before
    assert _all_verify(out) == ["m.int8.onnx", "m.onnx"]

    _export(spec, run, out, "--optimize")  # a new export does not keep the older one's int8 file
    assert _all_verify(out) == ["m.onnx", "m.opt.onnx"]
    assert not (out.parent / "m.int8.onnx.sha256").exists()
    report = json.loads((out.parent / "m.onnx.json").read_text())
    assert list(report["variants"]) == ["opt"] and report["variants"]["opt"]["file"] == str(
        out.parent / "m.opt.onnx"
    )


KILL_DURING_PUBLISH = """
import sys, time
import specc.publish
from specc.cli import main
moved = []
real = specc.publish._move
def move(src, dst):
    real(src, dst)
    moved.append(dst)
    if len(moved) == 2:  # the new model and its manifest are in place, the variants not
        print("ready", flush=True)
        time.sleep(60)
specc.publish._move = move
main(sys.argv[1:])
"""

KILL_WHILE_STAGING = """
import sys, time
import specc.export
from specc.cli import main
def stuck(*args, **kwargs):
    print("ready", flush=True)
    time.sleep(60)
specc.export.make_variant = stuck
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_kill_9_while_exporting_or_publishing(wine_run: tuple[Path, Path], tmp_path: Path) -> None:
    """kill -9 while variants are made: the previous export is intact and the next export removes the
    leaked work folder. kill -9 in the middle of the moves: the runtime refuses the mix (naming the
    journal) and the next export finishes the publish first."""
    spec, run = wine_run
    out = tmp_path / "m.onnx"
    _export(spec, run, out, "--int8")
    before = _files(tmp_path)
    args = ["export", str(spec), "-w", str(run), "--out", str(out), "--int8", "--optimize"]
    assert sigkill_when_ready(KILL_WHILE_STAGING, *args, ready="ready") == -9
    after = _files(tmp_path)
    leaked = [n for n in after if n.startswith(".m.onnx.tmp-")]
    assert len(leaked) == 1 and after[leaked[0]] == "folder"
    assert {k: v for k, v in after.items() if k not in leaked} == before
    assert _all_verify(out) == ["m.int8.onnx", "m.onnx"]

    assert sigkill_when_ready(KILL_DURING_PUBLISH, *args, ready="ready") == -9
    assert journal_path(out).exists() and leaked[0] not in _files(tmp_path)  # the next export removed it
    for name in ("m.onnx", "m.int8.onnx"):  # a new m.onnx next to the old int8 file: not loaded
        with pytest.raises(
            UsageError, match=r"interrupted while its files were being replaced \('\.m\.onnx\.publish'"
        ):
            load(tmp_path / name)

    stale = tmp_path / f".m.onnx.tmp-{_dead_pid()}-0badc0de"  # as kill -9 leaves it
    stale.mkdir()
    (stale / "raw.onnx").write_bytes(b"x" * 100)
    _export(spec, run, out, "--int8", "--optimize")
    assert _all_verify(out) == ["m.int8.onnx", "m.onnx", "m.opt.onnx"]
    assert sorted(n for n in _files(tmp_path) if n.startswith(".")) == []  # no journal, no work folder
