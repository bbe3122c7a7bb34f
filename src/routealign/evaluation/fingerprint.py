"""What a model's answers depend on, as one digest: the model's part of the answer-cache key.

An answer cached under a model's *name* outlives the model: retraining into the same folder, loading it
in another dtype or with another chat template would silently reuse stale answers. A fingerprint instead
describes what determines the answers:

* the weights and the files read with them: for a local checkpoint folder the SHA-256 of the contents of
  its weights, configs, tokenizer files and generation config (:data:`CHECKPOINT_FILES`); for a PEFT
  adapter folder, its files; for a routealign artifact its manifest, gates and ``experts/``, plus its
  base model; for a hub id, the revision asked for and the commit it resolved to in the local hub cache
  (found without a network call; a commit is immutable, so its files need no hashing);
* how they are run: the dtype the weights were actually loaded in, the attention implementation and the
  chat template text;
* the code that runs them: the transformers and torch versions (and peft's for adapters and artifacts,
  routealign's for artifacts, whose mixture is routealign code).

The system prompt and the decoding settings are the key's other part
(:meth:`~routealign.evaluation.generate.GenerationSettings.key_fields`). Left out on purpose: the
device (CPU and GPU answers differ by rounding only) and the folder's path (a moved checkpoint keeps its
answers). A served model (the API backend) cannot be fingerprinted: it is keyed by base URL and model
name, so after a server starts serving other weights under the same name, delete ``generations.jsonl``.

Hashing a multi-GB checkpoint on every run would be slow, so each file's digest is memoised in
``$ROUTEALIGN_CACHE/digests/`` (default ``~/.cache/routealign``) under (absolute path, size, mtime_ns,
inode), as make and rsync decide what changed: a rewritten file has a new mtime (and usually a new size
or inode) and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..io import cache_dir, sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    "*.pth",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.tiktoken",
    "chat_template.*",
    "*.py",
)
"""Files of a checkpoint folder that decide its answers (top level only: ``checkpoint-*/`` subfolders of a
trainer's output are not the model). A named ``gguf_file`` is added to them."""


@dataclass(frozen=True)
class Fingerprint:
    """``parts``: a JSON-able description of what determines the answers (no paths, no secrets)."""

    parts: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.parts, sort_keys=True).encode("utf-8")).hexdigest()

    @property
    def id(self) -> str:
        """The backend id of the answer-cache key."""
        return f"{self.parts.get('kind', 'model')}:sha256:{self.digest}"


# --- file digests, memoised ------------------------------------------------------------------------------


def digest_dir() -> Path:
    return cache_dir() / "digests"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's contents, memoised under (absolute path, size, mtime_ns, inode)."""
    from ..io import atomic_write_json

    path = Path(path).resolve()
    st = path.stat()
    key = [str(path), st.st_size, st.st_mtime_ns, st.st_ino]
    memo = digest_dir() / f"{hashlib.sha256(json.dumps(key).encode('utf-8')).hexdigest()}.json"
    try:
        record = json.loads(memo.read_text(encoding="utf-8"))
        if record.get("key") == key and isinstance(record.get("sha256"), str):
            return record["sha256"]
    except (OSError, ValueError):
        pass  # no memo yet, or an unreadable one: hash again
    if st.st_size > 1 << 30:
        log.info(
            "hashing %s (%.1f GB) for the answer cache; remembered until the file changes",
            path,
            st.st_size / 1e9,
        )
    digest = sha256_file(path)
    try:
        atomic_write_json(memo, {"key": key, "sha256": digest})
    except OSError as e:  # a read-only cache costs time, not correctness
        log.warning("cannot memoise the digest of %s in %s (%s)", path, memo.parent, e)
    return digest


def files_digest(root: Path, files: Iterable[Path]) -> dict:
    """``{sha256, files}``: one digest over the (path relative to ``root``, content digest) pairs."""
    entries = sorted((p.relative_to(root).as_posix(), file_sha256(p)) for p in files)
    blob = json.dumps(entries).encode("utf-8")
    return {"sha256": hashlib.sha256(blob).hexdigest(), "files": len(entries)}


def checkpoint_files(folder: Path, gguf_file: str | None = None) -> list[Path]:
    found = {p for pattern in CHECKPOINT_FILES for p in folder.glob(pattern) if p.is_file()}
    if gguf_file:
        found.add(folder / gguf_file)
    return sorted(found)


def _visible_files(folder: Path, *, recursive: bool) -> list[Path]:
    """Files under ``folder`` but hidden ones (locks, temporaries of atomic writes) and Markdown notes."""
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in folder.glob(pattern)
        if p.is_file()
        and p.suffix != ".md"
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# --- sources ---------------------------------------------------------------------------------------------


def _is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def hub_commit(repo_id: str, revision: str | None, filename: str = "config.json") -> str | None:
    """The commit ``revision`` of ``repo_id`` resolves to in the local hub cache; None if not cached.

    Reads the cache's refs and snapshot folders only (``snapshots/<commit>/``): no network call.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # a malformed id or revision: nothing cached under it
        return None
    if not isinstance(cached, str):
        return None
    parts = Path(cached).parts
    if "snapshots" in parts:
        commit = parts[parts.index("snapshots") + 1]
        if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit):
            return commit
    return None


def model_source(
    name_or_path: str, *, revision: str | None = None, gguf_file: str | None = None, model=None
) -> dict:
    """Where the base weights come from: a local folder's file digests, or a hub id and its commit."""
    from ..models.loading import resolve

    resolved = resolve(name_or_path)  # an embedded name → its converted checkpoint folder
    if _is_local(resolved):
        folder = Path(resolved).expanduser()
        files = checkpoint_files(folder, gguf_file)
        if not files:
            raise FileNotFoundError(
                f"{folder}: no checkpoint files to fingerprint ({', '.join(CHECKPOINT_FILES)})"
            )
        return {"local": files_digest(folder, files)}
    commit = hub_commit(name_or_path, revision)
    if commit is None and model is not None:  # transformers < 5 records the commit on the config
        commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    if commit is None:
        log.warning(
            "%s: the hub commit is unknown; cached answers are keyed by the id and revision only",
            name_or_path,
        )
    source = {"hub": name_or_path, "revision": revision, "commit": commit}
    if gguf_file:
        source["gguf_file"] = gguf_file
    return source


def adapter_source(adapter: str) -> dict:
    """A PEFT adapter: its folder's files, or a hub id and its commit."""
    folder = Path(adapter).expanduser()
    if folder.is_dir():
        return {"local": files_digest(folder, _visible_files(folder, recursive=False))}
    return {"hub": adapter, "commit": hub_commit(adapter, None, "adapter_config.json")}


def artifact_source(folder: str | os.PathLike) -> dict:
    """A routealign artifact: its manifest, and by its kind the gates and every file of the experts it
    names (``mixture``) or every file of its model folder (``model``)."""
    from ..models.artifact import GATES, MANIFEST, MODEL_FOLDER, expert_paths, read_manifest, recorded_kind

    root = Path(folder).expanduser().resolve()
    manifest = read_manifest(root)
    files = [root / MANIFEST]
    if recorded_kind(manifest) == "model":
        files += _visible_files(root / MODEL_FOLDER, recursive=True)
    else:
        files.append(root / GATES)
        for _, expert in expert_paths(root, manifest):  # resolved, inside the artifact
            files += _visible_files(expert, recursive=True)
    return {"local": files_digest(root, [f for f in files if f.is_file()])}


# --- fingerprints ---------------------------------------------------------------------------------------


def _versions(*packages: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def chat_template_sha256(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hf_fingerprint(
    model, tokenizer, model_cfg, *, adapter: str | None = None, artifact: str | None = None
) -> Fingerprint:
    """Fingerprint of a loaded transformers model: ``model_cfg`` (a ``ModelConfig``) names the base
    weights; ``adapter`` a PEFT adapter on top; ``artifact`` a routealign artifact (whose manifest names
    the base model, so ``model_cfg`` is then read from it)."""
    import torch

    packages = ["transformers", "torch"]
    parts: dict = {"kind": "base"}
    if artifact:
        from ..models.artifact import model_config

        parts = {"kind": "routealign", "artifact": artifact_source(artifact)}
        model_cfg = model_config(artifact)
        packages += ["peft", "routealign"]
    elif adapter:
        parts = {"kind": "peft", "adapter": adapter_source(adapter)}
        packages.append("peft")
    parts["model"] = model_source(
        model_cfg.name_or_path, revision=model_cfg.revision, gguf_file=model_cfg.gguf_file, model=model
    )
    dtype = getattr(model, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next(model.parameters()).dtype
    config = getattr(model, "config", None)
    parts.update(
        dtype=str(dtype).removeprefix("torch."),
        attn_implementation=getattr(config, "_attn_implementation", None),
        chat_template_sha256=chat_template_sha256(tokenizer),
        versions=_versions(*packages),
    )
    return Fingerprint(parts)


def api_fingerprint(base_url: str, model: str) -> Fingerprint:
    """A served model: only what the client knows (the server's weights are out of sight)."""
    return Fingerprint(
        {"kind": "api", "base_url": _without_credentials(base_url.rstrip("/")), "model": model}
    )


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
