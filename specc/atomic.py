"""Crash-safe file writes: write to a temporary sibling, fsync, then rename over the target.

A reader never sees a half-written file: it sees either the old content or the new one. A process
killed mid-write leaves at most a hidden temporary file (``.{name}.tmp-{pid}-{hex}``) next to the
target, which :func:`clean_stale_temps` removes on the next start. Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from specc.errors import OutputError

__all__ = [
    "TEMP_PATTERN",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_files",
    "atomic_write_text",
    "clean_stale_temps",
    "fsync_dir",
    "fsync_file",
    "pid_alive",
    "sha256_file",
    "temp_name",
    "write_failure",
    "writing",
]

log = logging.getLogger(__name__)

#: Name of a temporary file made by :func:`atomic_path`: ``.{name}.tmp-{pid}-{hex}``.
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")

_CHUNK = 1 << 20


def temp_name(name: str) -> str:
    """Returns a fresh temporary name for ``name`` that matches :data:`TEMP_PATTERN`.

    Args:
        name: Final file or folder name.

    Returns:
        ``.{name}.tmp-{pid}-{8 hex digits}``.
    """
    return f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flushes a file's content to stable storage.

    Args:
        path: File to flush.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flushes a folder's entries (creations, renames, deletions) to stable storage.

    A no-op where folders cannot be opened (Windows).

    Args:
        path: Folder to flush.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except (PermissionError, IsADirectoryError):  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on folders
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path in the target's folder; on success moves it over the target.

    The caller writes the complete file at the yielded path. When the block exits normally the
    file is fsynced, renamed over ``path`` with :func:`os.replace` and the folder is fsynced. When
    the block raises, the temporary file is removed, ``path`` is left untouched and the exception
    propagates.

    Args:
        path: Final file path; its folder must exist.

    Yields:
        The temporary path (``.{name}.tmp-{pid}-{hex}`` next to ``path``), not yet created.

    Raises:
        FileNotFoundError: The block finished without creating the temporary file.
    """
    target = Path(path)
    tmp = target.parent / temp_name(target.name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        if exc.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replaces ``path`` with ``data`` atomically and durably.

    Args:
        path: Target file; its folder must exist.
        data: The whole new content.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replaces ``path`` with ``text`` (UTF-8, newlines kept as given) atomically and durably.

    Args:
        path: Target file; its folder must exist.
        text: The whole new content.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_files(files: Mapping[Path, bytes | str]) -> None:
    """Replaces several files, each atomically and durably, with one folder flush per folder.

    Every new content goes to its temporary sibling and is fsynced; then the temporaries are renamed
    over their targets in the given order and each folder is fsynced once, so everything is durable
    when this returns. A process killed at any point leaves each file old or new, never half-written,
    as :func:`atomic_write_bytes` one file after the other would. What it saves is the folder flush
    after each file (one ``fsync`` per folder instead of one per file): it suits files that belong
    together and need no order among themselves on disk until the call returns (after a power loss
    during the call any of the renames may be lost, none half-done). On a failure the temporaries
    are removed; the renames already done stay.

    Args:
        files: Target path -> new content (``str`` is written as UTF-8); their folders must exist.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for target, data in files.items():
            tmp = target.parent / temp_name(target.name)
            temps.append((tmp, target))
            try:
                with open(tmp, "wb") as f:
                    f.write(data.encode("utf-8") if isinstance(data, str) else data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                if exc.filename is None:  # a failed write() names no file: name the one being written
                    raise OSError(exc.errno, exc.strerror, str(target)) from exc
                raise
        while temps:
            tmp, target = temps[0]
            os.replace(tmp, target)
            temps.pop(0)
    finally:
        for tmp, _ in temps:
            _remove(tmp)
    for folder in dict.fromkeys(target.parent for target in files):
        fsync_dir(folder)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Returns the SHA-256 of a file's content as lowercase hex.

    Args:
        path: File to hash.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pid_alive(pid: int) -> bool:
    """Tells whether another process with this id runs now (POSIX only; False elsewhere).

    The current process counts as not alive: a temporary file named with our own id found at
    start-up belongs to an earlier process that had the same id (common in containers).

    Args:
        pid: Process id.
    """
    if pid == os.getpid() or pid <= 0 or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike[str], *, skip_live: bool = True) -> list[Path]:
    """Removes temporary files left in ``folder`` by interrupted :func:`atomic_path` writes.

    Args:
        folder: Folder to clean (not recursive); a missing folder is fine.
        skip_live: Keeps temporaries whose writer process (another one than this) still runs.

    Returns:
        The removed paths.
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        match = TEMP_PATTERN.match(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink():
            continue
        if skip_live and pid_alive(int(match["pid"])):
            log.info("keeping %s: its writer (pid %s) still runs", entry, match["pid"])
            continue
        _remove(entry)
        removed.append(entry)
        log.info("removed stale temporary file %s", entry)
    if removed:
        fsync_dir(root)
    return removed


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, if ``exc`` is an I/O failure: an OSError, or what safetensors and
    ``torch.save`` raise instead (``SafetensorError: ... I/O error``, ``RuntimeError: [enforce fail
    at inline_container.cc...] unexpected pos``, which is what a full disk gives); None otherwise."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" and "I/O error" in text:
        return text.split("I/O error: ", 1)[-1]
    if isinstance(exc, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text):
        return "torch.save could not write the file (a full disk or a file size limit gives this)"
    return None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an I/O failure inside the block into an :class:`~specc.errors.OutputError` naming ``path``
    (and the free space left where the disk is nearly full); other errors pass through."""
    try:
        yield
    except Exception as exc:
        why = write_failure(exc)
        if why is None:
            raise
        free = ""
        with contextlib.suppress(OSError):
            left = shutil.disk_usage(path.parent if path.parent.exists() else Path(".")).free
            free = f"; {left:,} bytes free on its disk" if left < 64 * 1024 * 1024 else ""
        raise OutputError(f"cannot write {path}: {why}{free}") from None
