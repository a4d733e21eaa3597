"""Tests of specc.atomic: atomic replace, cleanup on errors and after a SIGKILL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sigkill_when_ready

from specc.atomic import (
    TEMP_PATTERN,
    atomic_path,
    atomic_write_bytes,
    atomic_write_files,
    atomic_write_text,
    clean_stale_temps,
    sha256_file,
    temp_name,
)


def test_write_bytes_and_text_replace(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    text = tmp_path / "out.txt"
    atomic_write_text(text, "héllo\n")
    assert text.read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.txt"]


def test_temp_path_is_hidden_sibling(tmp_path: Path) -> None:
    target = tmp_path / "model.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        match = TEMP_PATTERN.match(tmp.name)
        assert match is not None
        assert match["name"] == "model.json"
        assert int(match["pid"]) == os.getpid()
        tmp.write_text("{}")
    assert target.read_text() == "{}"


def test_exception_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("new, half written")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_block_that_writes_nothing_fails(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError), atomic_path(target):
        pass
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # several read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(os.name != "posix", reason="live-writer detection is POSIX only")
def test_clean_stale_temps(tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".a.txt.tmp-{os.getpid()}-00ff"  # own pid: from an earlier process
        live = tmp_path / f".b.txt.tmp-{writer.pid}-abcd"
        keep = [tmp_path / "a.txt", tmp_path / ".hidden", tmp_path / "x.tmp-1-ab"]
        for path in [stale, live, *keep]:
            path.write_text("x")
        (tmp_path / temp_name("folder")).mkdir()  # folders are not this function's business

        assert clean_stale_temps(tmp_path) == [stale]
        assert live.exists() and all(p.exists() for p in keep)
        assert clean_stale_temps(tmp_path, skip_live=False) == [live]
        assert clean_stale_temps(tmp_path / "missing") == []
    finally:
        writer.kill()
        writer.wait()


_SLOW_WRITER = """
import sys, time
from specc.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp, open(tmp, "wb") as f:
    f.write(b"n" * 1_000_000)
    f.flush()
    print("WRITING", flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_write_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old content")
    assert sigkill_when_ready(_SLOW_WRITER, str(target), ready="WRITING") == -signal.SIGKILL
    assert target.read_bytes() == b"old content"
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and TEMP_PATTERN.match(leftovers[0].name)
    assert clean_stale_temps(tmp_path) == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_write_files_replaces_each_with_one_folder_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("old a")
    synced: list[str] = []
    fsync = os.fsync

    def counted(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else str(fd))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", counted)
    files = {tmp_path / "a.txt": "new a", tmp_path / "b.bin": b"\x00b", tmp_path / "sub" / "c.txt": "c"}
    atomic_write_files(files)
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.bin").read_bytes() == b"\x00b"
    assert (tmp_path / "sub" / "c.txt").read_text() == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "sub"]
    # three files, then each of the two folders once
    assert len(synced) == 5
    if os.path.exists("/proc/self/fd"):
        assert synced[3:] == [str(tmp_path), str(tmp_path / "sub")]


def test_write_files_failure_keeps_old_files_and_removes_temps(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(FileNotFoundError):  # the second file's folder does not exist: nothing renamed
        atomic_write_files({tmp_path / "a.txt": "new a", tmp_path / "missing" / "b.txt": "b"})
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old a"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("a folder cannot be replaced by a file")
    with pytest.raises(OSError):  # the second rename fails: the first stays done, no temporary is left
        atomic_write_files({tmp_path / "a.txt": "new a", tmp_path / "d": "d", tmp_path / "e.txt": "e"})
    assert (tmp_path / "a.txt").read_text() == "new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]


_SLOW_BATCH = """
import os, sys, time
from pathlib import Path
from specc import atomic
replace = os.replace
def slow(src, dst):
    replace(src, dst)
    print("RENAMED", flush=True)
    time.sleep(60)
atomic.os.replace = slow
folder = Path(sys.argv[1])
atomic.atomic_write_files({folder / "a.txt": "new a", folder / "b.txt": "new b"})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_between_renames_leaves_old_or_new_files(tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"old {name[0]}")
    assert sigkill_when_ready(_SLOW_BATCH, str(tmp_path), ready="RENAMED") == -signal.SIGKILL
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "old b"
    leftovers = [p for p in tmp_path.iterdir() if p.name not in ("a.txt", "b.txt")]
    assert len(leftovers) == 1 and TEMP_PATTERN.match(leftovers[0].name)  # b's complete temporary
    assert clean_stale_temps(tmp_path) == leftovers
