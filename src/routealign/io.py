"""Atomic file and folder writes: a reader never sees a half-written artifact.

Everything routealign writes (adapters, gates, checkpoints, configs) goes to a temporary sibling first
and is renamed into place, so a kill at any moment leaves either the old version or the new one. A
temporary folder that a kill left behind (``.NAME.*.tmp``) is deleted the next time :func:`atomic_dir`
writes NAME.
Files and folders get the modes an ordinary ``open``/``mkdir`` would give (the umask decides), not the
private 0600/0700 of temporary files, so a group-writable umask makes a cache a team can share. :func:`folder_lock` keeps two runs from writing one folder.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """routealign's cache (converted models, file digests, judge replies): ``$ROUTEALIGN_CACHE``,
    default ``~/.cache/routealign``."""
    return Path(os.environ.get("ROUTEALIGN_CACHE", "~/.cache/routealign")).expanduser()


def _umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux), since
    setting it to read it would briefly affect files other threads create."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode an ordinary open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``path`` in one rename.

    An existing ``path`` is moved aside first and deleted only after the new folder is in place, so the
    window in which neither exists is two renames wide; :func:`recover_dir` repairs it after a kill.
    Temporary folders of earlier, killed writes of ``path`` are removed first: the caller is the one
    writer of ``path`` (the main process, under a run's :func:`folder_lock` or a conversion lock).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); give it mkdir's mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _umask_modes(tmp)
    replace_dir(tmp, path)


def _umask_modes(folder: Path) -> None:
    """Give the files written into ``folder`` the umask's mode: libraries that write through a private
    temporary file (safetensors' ``save_file``) leave 0600, which a team sharing a cache cannot read."""
    mask = _umask()
    for file in folder.rglob("*"):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, (0o666 | (file.stat().st_mode & 0o111)) & ~mask)


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing what is there (see :func:`atomic_dir`)."""
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str | os.PathLike) -> None:
    """Undo a replacement that a kill interrupted between its two renames."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        os.replace(old, path)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` siblings of ``path`` that killed writes left; return what was removed.

    Only the one writer of ``path`` may call this (a concurrent writer's temporary would go too).
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except OSError:  # not ours to delete (another user's, in a shared cache): leave it
            continue
        removed.append(stale)
    return removed


LOCK_FILE = ".routealign.lock"


class FolderBusyError(RuntimeError):
    """The output folder cannot be had: another process holds its lock (another run is writing it),
    or the path is a file."""


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the block, or fail at once.

    The lock is ``flock`` on ``FOLDER/.routealign.lock``: the kernel drops it when the process dies, so
    a killed run never leaves the folder locked. The file records the holder's pid for the message.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderBusyError(f"{folder}: is a file, not a folder; choose another output folder")
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    f = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not protected from each other there
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise FolderBusyError(
                    f"{folder}: another process is writing this folder ({holder}); wait for it to finish "
                    "or choose another output folder"
                ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{what}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield folder
    finally:
        f.close()  # closing releases the flock
