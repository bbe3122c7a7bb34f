"""Atomic file and folder writes: a reader never sees a half-written artifact.

Everything routealign writes (adapters, gates, checkpoints, configs) goes to a temporary sibling first
and is renamed into place, so a kill at any moment leaves either the old version or the new one. A
temporary folder that a kill left behind (``.NAME.*.tmp``) is deleted the next time :func:`atomic_dir`
writes NAME.
Files and folders get the modes an ordinary ``open``/``mkdir`` would give (the umask decides), not the
private 0600/0700 of temporary files, so a group-writable umask makes a cache a team can share.
Every safetensors file routealign writes goes through :func:`save_safetensors` (safetensors' own
``save_file`` leaves 0600); caches and resume state carry a SHA-256 of their tensors in the header,
which :func:`load_safetensors` checks, so a flipped bit or a truncated file is named, not used.
:func:`folder_lock` keeps two runs from writing one folder, and neither it nor
:func:`check_replaceable` lets a command write into, or replace, a folder that it did not make.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import FolderBusyError


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


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it gets the umask's mode (mkstemp and
    safetensors make files private, 0600), is synced and renamed over ``path``; on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# --- safetensors: the one write path, with checksums where a file is reused -----------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's contents, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()


CHECKSUM_KEY = "routealign.sha256"
"""Header field holding :func:`tensors_sha256` of a file's tensors."""


class DamagedFileError(ValueError):
    """A file routealign wrote earlier cannot be read back as written: truncated, not safetensors, or its
    tensors no longer match the checksum in its header."""


def tensors_sha256(tensors: dict) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        # Viewed as bytes, so that every dtype (bfloat16 included) hashes without a conversion.
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def save_safetensors(path: str | os.PathLike, tensors: dict, *, metadata: dict | None = None,
                     checksum: bool = False) -> None:  # fmt: skip
    """Write ``tensors`` to ``path`` atomically, with the umask's file mode; ``checksum``: record
    :func:`tensors_sha256` in the header, for :func:`load_safetensors` to check."""
    from safetensors.torch import save_file

    header = dict(metadata or {})
    if checksum:
        header[CHECKSUM_KEY] = tensors_sha256(tensors)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=header or None)


def load_safetensors(
    path: str | os.PathLike, *, device: str = "cpu", checksum: str = "off"
) -> tuple[dict, dict]:
    """``(tensors, header metadata)`` of a safetensors file. ``checksum``: ``required`` (the header must
    hold one, and the tensors must match it), ``if-present`` (files from before checksums were written
    have none) or ``off``. A file that cannot be read or fails the check raises :class:`DamagedFileError`
    naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DamagedFileError(f"{path}: not a readable safetensors file ({e})") from None
    if checksum not in ("off", "if-present", "required"):
        raise ValueError(f"checksum: {checksum!r} is not off, if-present or required")
    recorded = header.get(CHECKSUM_KEY)
    if recorded is None and checksum == "required":
        raise DamagedFileError(f"{path}: no checksum in its header (written by an older routealign?)")
    if recorded is not None and checksum != "off":
        if tensors_sha256(tensors) != recorded:
            raise DamagedFileError(
                f"{path}: its tensors do not match the checksum in its header (the file changed "
                "after it was written)"
            )
    return tensors, header


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


def recover_tree(root: str | os.PathLike) -> list[Path]:
    """:func:`recover_dir` for every replacement under ``root`` that a kill interrupted; returns the
    folders put back. Only the one writer of ``root`` may call this (under its run's lock)."""
    root = Path(root)
    recovered = []
    for old in sorted(root.rglob(".*.old")) if root.is_dir() else []:
        path = old.with_name(old.name[1 : -len(".old")])
        if old.is_dir() and not path.exists():
            recover_dir(path)
            recovered.append(path)
    return recovered


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


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _is_empty_dir(folder: Path) -> bool:
    return folder.is_dir() and next(folder.iterdir(), None) is None


def locked_by(folder: Path) -> str | None:
    """What last claimed ``folder`` with :func:`folder_lock` (``training``, ``evaluation``, ...), or None."""
    try:
        return (folder / LOCK_FILE).read_text(encoding="utf-8").split(",", 1)[0].strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def json_object_with(path: Path, *keys: str) -> bool:
    """Whether ``path`` is a JSON object holding every one of ``keys``: how an earlier routealign output
    is told from a user's file of the same name."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


def refuse_foreign(folder: str | os.PathLike, what: str, ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse to write into ``folder`` when it holds anything and is not ``what``'s own: claimed by a
    ``what`` before (its lock file says so), or recognised by ``ours`` (an output from before the lock
    recorded its holder). Never destroy, or mix files into, what routealign did not make."""
    folder = Path(folder)
    if not folder.is_dir() or _is_empty_dir(folder):
        return
    holder = locked_by(folder)
    if holder == what or (ours is not None and ours(folder)):
        return
    if holder is not None:
        raise FolderBusyError(
            f"{folder}: is a routealign {holder} folder, not a {what} one; choose another folder"
        )
    raise FolderBusyError(
        f"{folder}: not empty ({_listing(folder)}) and not a routealign {what} folder; nothing was written: "
        "choose a new or empty folder"
    )


def check_replaceable(folder: str | os.PathLike, *, marker: str, what: str, overwrite: bool,
                      flag: str = "--overwrite") -> None:  # fmt: skip
    """Before a command replaces ``folder`` whole: it must be absent or empty, or an earlier output of
    the same command (it holds ``marker``) and the user asked to replace it (``flag``). A folder the
    command did not make is refused even with ``flag``: it would be deleted."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderBusyError(f"{folder}: is a file, not a folder; choose another output folder")
    if not folder.exists() or _is_empty_dir(folder):
        return
    if not (folder / marker).is_file():
        raise FolderBusyError(
            f"{folder}: not empty ({_listing(folder)}) and not a {what} output (no {marker}); it would be "
            "replaced, so nothing was written: choose a new or empty folder"
        )
    if not overwrite:
        raise FolderBusyError(f"{folder}: holds an earlier {what} output; pass {flag} to replace it")


@contextmanager
def folder_lock(
    folder: str | os.PathLike, what: str = "run", ours: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the block, or fail at once.

    The lock is ``flock`` on ``FOLDER/.routealign.lock``: the kernel drops it when the process dies, so
    a killed run never leaves the folder locked. The file records what holds it (``what``) and its pid,
    which a refused claimant reads into its error and :func:`locked_by` reads to recognise the folder.
    Written here rather than with ``filelock`` (which the model cache's lock uses): filelock 3.x opens the
    file with ``O_TRUNC`` on every attempt, so a refused claimant would erase the holder's record, and
    4.x falls back to a soft lock whose marker file the record would overwrite.
    A folder with contents that no earlier ``what`` made (:func:`refuse_foreign`) is refused first.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderBusyError(f"{folder}: is a file, not a folder; choose another output folder")
    refuse_foreign(folder, what, ours)
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
