"""Publishing a set of files as one step: an export with its variants, manifests and report.

Everything is made in a hidden work folder next to the target (``.M.onnx.tmp-<pid>-<hex>/``, the
:func:`specc.atomic.temp_name` of the target), so a failure or Ctrl-C while exporting, verifying or
converting leaves the previous export exactly as it was. :meth:`Stage.publish` then

1. writes a journal ``.M.onnx.publish`` (atomically) naming the work folder, the files to move and
   the files of an older export to remove (variants this export did not make);
2. with SIGINT and SIGTERM held back (the moves take milliseconds), moves every file into place and
   removes the older ones;
3. removes the journal, then the work folder.

POSIX cannot rename several files at once, so a process killed in step 2 (kill -9, power loss)
leaves the journal behind: while it is there :func:`check_published` (called by
:func:`specc.runtime.load`) refuses the model instead of loading a mix of two exports, and the next
export to the same target finishes the moves first (every staged file was complete, verified and
fsynced before the journal was written). Work folders of dead processes (``kill -9`` while
exporting) are removed by the next export into the same folder (the owner's pid is checked).

Torch-free: the runtime reads the journal's name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Annotated

from pydantic import Field

from specc.atomic import (
    TEMP_PATTERN,
    atomic_write_text,
    fsync_dir,
    fsync_file,
    pid_alive,
    temp_name,
    write_failure,
)
from specc.contracts.base import Contract, loads, parse
from specc.errors import OutputError, UsageError

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".publish"
#: Variant names derived from a model ``M.onnx``: ``M.<kind>.onnx``.
_VARIANT = re.compile(r"^(?P<base>.+)\.(?:opt|int8|fp16)\.onnx$")
_NAME = r"^[^/\\\x00]+$"
FileName = Annotated[str, Field(pattern=_NAME, max_length=255)]


class Journal(Contract):
    """What an unfinished publish still has to do (writer and reader: this module)."""

    pid: Annotated[int, Field(ge=0)]
    work: FileName
    move: list[FileName]
    remove: list[FileName]


def journal_path(target: Path) -> Path:
    """``.M.onnx.publish`` next to ``M.onnx``."""
    return target.parent / f".{target.name}{JOURNAL_SUFFIX}"


def _read_journal(path: Path) -> Journal:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the publish journal '{path}': {e}") from e
    journal = parse(Journal, loads(text, f"publish journal '{path}'"), f"publish journal '{path}'")
    if not TEMP_PATTERN.match(journal.work):
        raise UsageError(f"publish journal '{path}' names '{journal.work}', which is not a work folder")
    return journal


def check_published(model: Path) -> None:
    """Refuse a model (or a variant of it) whose export was interrupted while it was being published."""
    names = [model.name]
    match = _VARIANT.match(model.name)
    if match:
        names.append(match["base"] + ".onnx")
    for name in names:
        journal = journal_path(model.with_name(name))
        if journal.exists():
            raise UsageError(
                f"the export of '{model.with_name(name)}' was interrupted while its files were being "
                f"replaced ('{journal.name}' is still there): run the same specc export again to finish it"
            )


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (main thread, POSIX; elsewhere a no-op)."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask (Windows)
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _move(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _apply(folder: Path, journal: Journal) -> None:
    work = folder / journal.work
    for name in journal.move:
        if (work / name).exists():  # already moved where an earlier try was cut short
            _move(work / name, folder / name)
    for name in journal.remove:
        (folder / name).unlink(missing_ok=True)
    fsync_dir(folder)


def finish_interrupted(target: Path) -> bool:
    """Finish a publish of ``target`` that a dead process left half done; True if there was one.

    A journal whose writer still runs is another export publishing right now: refused."""
    path = journal_path(target)
    if not path.exists():
        return False
    journal = _read_journal(path)
    if pid_alive(journal.pid):
        raise UsageError(f"another specc export (pid {journal.pid}) is publishing '{target}' right now")
    _apply(target.parent, journal)
    path.unlink()
    fsync_dir(target.parent)
    shutil.rmtree(target.parent / journal.work, ignore_errors=True)
    log.warning("finished the interrupted publish of %s (its journal %s)", target, path.name)
    return True


def clean_stale_work(folder: Path) -> list[Path]:
    """Remove the work folders and temporary files of exports whose process is gone.

    Only entries named like :func:`specc.atomic.temp_name` of an ``.onnx`` file (or its manifest,
    report, external data) are considered; one whose pid runs is kept."""
    removed: list[Path] = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = TEMP_PATTERN.match(entry.name)
        if match is None or ".onnx" not in match["name"] or entry.is_symlink():
            continue
        if pid_alive(int(match["pid"])):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        log.info("removed %s, left by an export that did not finish", entry)
    return removed


class Stage:
    """A hidden work folder for the files of one publish (``with Stage(target) as stage: ...``).

    Files are made at :meth:`path`, registered with :meth:`add`, and moved next to the target by
    :meth:`publish`; leaving the block removes the work folder (with whatever was not published).
    An I/O failure inside the block (disk full, read-only folder, name too long) becomes an
    :class:`~specc.errors.OutputError` (exit 2) naming the file, the previous export untouched.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.folder = target.parent
        self.work = self.folder / temp_name(target.name)
        self._files: list[str] = []

    def __enter__(self) -> Stage:
        with _writing(self.folder):
            finish_interrupted(self.target)
            clean_stale_work(self.folder)
            self.work.mkdir()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        if exc is None or isinstance(exc, UsageError):
            return
        why = write_failure(exc)
        name = getattr(exc, "filename", None)
        # an OSError about another file (an input that cannot be read) is not a failed write
        if why is not None and (not name or Path(name).resolve().is_relative_to(self.folder.resolve())):
            raise _output_error(exc, why, self.target) from None

    def path(self, name: str) -> Path:
        """Where to make the file that will be published as ``name``."""
        return self.work / name

    def add(self, *paths: Path) -> None:
        """Publish these files (made in the work folder) under their names."""
        for p in paths:
            if p.parent != self.work or not p.is_file():
                raise ValueError(f"{p} is not a file of the work folder {self.work}")
            if p.name not in self._files:
                self._files.append(p.name)

    def publish(self, remove: Sequence[str] = ()) -> None:
        """Move every added file into place and remove ``remove`` (names in the target's folder)."""
        for name in self._files:
            fsync_file(self.work / name)
        fsync_dir(self.work)
        journal = Journal(
            pid=os.getpid(),
            work=self.work.name,
            move=list(self._files),
            remove=[n for n in remove if n not in self._files],
        )
        path = journal_path(self.target)
        with _signals_held():
            atomic_write_text(path, json.dumps(journal.model_dump(), indent=1) + "\n")
            _apply(self.folder, journal)
            path.unlink()
            fsync_dir(self.folder)


def _output_error(exc: BaseException, why: str, default: Path) -> OutputError:
    name = getattr(exc, "filename", None)
    return OutputError(f"cannot write {name or default}: {why}")


@contextlib.contextmanager
def _writing(default: Path) -> Iterator[None]:
    try:
        yield
    except UsageError:
        raise
    except Exception as exc:
        why = write_failure(exc)
        if why is None:
            raise
        raise _output_error(exc, why, default) from None
