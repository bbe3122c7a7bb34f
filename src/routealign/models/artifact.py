"""One artifact folder per trained run, and ``routealign.load`` to bring it back.

The manifest records the artifact's ``kind``, and loading dispatches on it. Layouts (every file written
atomically; ``routealign.json`` last, so its presence means "complete")::

    ARTIFACT/                kind: mixture (SafeMoE, MidPO)
      routealign.json        manifest: kind, recipe, resolved config, expert names → folders, gate config
      experts/<slug>/        one standard PEFT LoRA adapter folder per expert (PEFT alone can load it)
      gates.safetensors      the trained gate heads

    ARTIFACT/                kind: model (RASA)
      routealign.json        manifest: kind, recipe, resolved config, the base model
      model/                 a whole transformers model folder (``AutoModelForCausalLM`` loads it)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .. import __version__
from ..config import GateConfig, ModelConfig, from_dict
from ..io import atomic_write_json, save_safetensors
from .loading import load_model, load_tokenizer
from .mixture import Mixture, MixtureError, attach_mixture, read_peft_expert

log = logging.getLogger(__name__)

MANIFEST = "routealign.json"
GATES = "gates.safetensors"
FORMAT_VERSION = 1
KINDS = ("mixture", "model")
"""What an artifact holds: LoRA experts behind trained gates, or a whole transformers model folder."""
LEGACY_KINDS = {"safemoe": "mixture", "midpo": "mixture", "rasa": "model"}
"""The kind of an artifact whose manifest predates ``kind``, by its recipe."""
MODEL_FOLDER = "model"


def save_gates(mixture: Mixture, path: Path) -> None:
    """The gate tensors, with the mapping and the expert order they were trained for in the header."""
    header = {
        "routealign.gate.mapping": mixture.gate_cfg.mapping,
        "routealign.experts": json.dumps(mixture.expert_names),
    }
    save_safetensors(path, mixture.gate_state_dict(), metadata=header)


def check_gates_header(path: Path, mixture: Mixture) -> None:
    """Gates trained for another mapping or expert order would load by shape and route nonsense.
    (Artifacts from before the header existed have none: softmax gates, in the manifest's order.)"""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    mapping = header.get("routealign.gate.mapping", "softmax")
    try:
        experts = json.loads(header.get("routealign.experts", json.dumps(mixture.expert_names)))
    except json.JSONDecodeError:
        raise MixtureError(f"{path}: unreadable expert list in the header") from None
    if mapping != mixture.gate_cfg.mapping or experts != mixture.expert_names:
        raise MixtureError(
            f"{path}: gates trained for {mapping} gates over {experts}, but the manifest describes "
            f"{mixture.gate_cfg.mapping} gates over {mixture.expert_names}"
        )


def write_manifest(
    folder: Path,
    *,
    kind: str,
    recipe: str,
    config: dict,
    model: ModelConfig,
    experts: list[dict] | None = None,
    gate: GateConfig | None = None,
) -> None:
    """The manifest, written last: its presence means the artifact is complete. A ``mixture`` names
    its experts and gate; a ``model`` holds its weights under ``model/``."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if (kind == "mixture") != (experts is not None and gate is not None):
        raise ValueError("a mixture artifact names its experts and gate; a model artifact neither")
    manifest = {
        "format": "routealign-artifact",
        "format_version": FORMAT_VERSION,
        "routealign_version": __version__,
        "kind": kind,
        "recipe": recipe,
        "model": asdict(model),
    }
    if kind == "mixture":
        manifest.update(experts=experts, gate=asdict(gate))
    manifest["config"] = config
    atomic_write_json(folder / MANIFEST, manifest)


def recorded_kind(manifest: dict) -> str | None:
    """The manifest's ``kind``; manifests from before it was recorded say it by their recipe."""
    return manifest.get("kind", LEGACY_KINDS.get(manifest.get("recipe")))


def artifact_kind(manifest: dict, where: str | Path) -> str:
    """:func:`recorded_kind`, which must be one this routealign loads."""
    kind = recorded_kind(manifest)
    if kind not in KINDS:
        raise MixtureError(
            f"{where}: artifact kind {kind!r} (recipe {manifest.get('recipe')!r}) is not one this routealign "
            f"loads ({', '.join(KINDS)})"
        )
    return kind


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: not a routealign artifact ({MANIFEST} is missing; did training finish?)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MixtureError(f"{path}: not a readable manifest ({e})") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != "routealign-artifact"
        or manifest.get("format_version", 0) > FORMAT_VERSION
    ):
        shown = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise MixtureError(f"{path}: unknown artifact format {shown!r}")
    required = ("model",) if recorded_kind(manifest) == "model" else ("model", "experts", "gate")
    missing = [key for key in required if not isinstance(manifest.get(key), dict | list)]
    if missing:
        raise MixtureError(f"{path}: the manifest lacks {', '.join(missing)}")
    return manifest


SAFE_ATTENTION = (None, "eager", "sdpa")
"""Attention backends a manifest may name: those that run transformers' and torch's own code."""
FAST_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention")
"""Backends a model may have been trained with but a manifest cannot ask for: with the ``kernels``
package installed transformers fetches flash attention from the hub, which is remote code. An artifact
naming one loads with ``sdpa`` (the same attention, up to rounding)."""


def model_config(folder: str | Path, *, trust_remote_code: bool = False, **overrides) -> ModelConfig:
    """The base model an artifact was trained on, as its manifest records it, with these overrides.

    A manifest is data from disk, possibly downloaded: it names the base model (hub id or folder),
    revision, dtype and chat template, but never whether code may run. ``trust_remote_code`` is the
    caller's decision alone, and an attention backend other than transformers' built-in ones is refused.
    """
    where = Path(folder) / MANIFEST
    manifest = read_manifest(folder)
    data = dict(manifest["model"])
    if recorded_kind(manifest) == "model":  # the trained weights themselves, inside the folder
        data.update(name_or_path=str(Path(folder) / MODEL_FOLDER), gguf_file=None, revision=None)
    if data.get("attn_implementation") in FAST_ATTENTION:
        log.warning(
            "%s: model.attn_implementation %s is not taken from a manifest (it may fetch a hub kernel); "
            "loading with sdpa",
            where,
            data["attn_implementation"],
        )
        data["attn_implementation"] = "sdpa"
    if data.get("attn_implementation") not in SAFE_ATTENTION:
        raise MixtureError(
            f"{where}: model.attn_implementation {data['attn_implementation']!r} is not a built-in backend "
            f"({', '.join(str(a) for a in SAFE_ATTENTION[1:])}); pass the model yourself to use it"
        )
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["trust_remote_code"] = bool(trust_remote_code)
    return from_dict(ModelConfig, data, f"{where}: model")


def expert_paths(folder: str | Path, manifest: dict) -> list[tuple[str, Path]]:
    """(name, folder) of every expert, each inside the artifact folder (a manifest cannot point out)."""
    root = Path(folder).resolve()
    found = []
    for entry in manifest["experts"]:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("path"), str)
        ):
            raise MixtureError(
                f"{Path(folder) / MANIFEST}: each expert needs a name and a path, got {entry!r}"
            )
        path = (root / entry["path"]).resolve()
        if not path.is_relative_to(root) or path == root:
            raise MixtureError(
                f"{Path(folder) / MANIFEST}: expert {entry['name']!r} points outside the artifact ({entry['path']!r})"
            )
        found.append((entry["name"], path))
    return found


def gate_config(manifest: dict, where: str) -> GateConfig:
    data = dict(manifest["gate"])
    # Artifacts written before ``pool`` existed pooled the raw residual stream: keep routing them so.
    data.setdefault("pool", "mean")
    # Their gates started evenly; the initial values no longer matter once trained gates are loaded,
    # and an even start is the one that every older setting (``top_k: 1`` included) is valid with.
    data.setdefault("init_null", None)
    return from_dict(GateConfig, data, f"{where}: gate")


def load(
    folder: str | Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """The model an artifact describes, by the kind its manifest records; see :func:`load_mixture`."""
    if artifact_kind(read_manifest(folder), Path(folder) / MANIFEST) == "mixture":
        return load_mixture(folder, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    # The artifact holds a whole transformers model.
    cfg = model_config(folder, trust_remote_code=trust_remote_code, device=device, dtype=dtype)
    return load_model(cfg, device=cfg.device).requires_grad_(False).eval()


def load_mixture(
    folder: str | Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """A transformers model with the artifact's experts and gates attached, in eval mode.

    ``model.generate`` works as usual; ``model.routealign_mixture`` is the handle for switching the
    experts off (``with model.routealign_mixture.mode("base"):``) and for reading the routing.
    ``dtype``/``device`` None keep the manifest's. ``trust_remote_code`` lets the base model's hub
    repository run its own code; it is off unless you pass it, whatever the manifest says.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    experts = expert_paths(folder, manifest)
    gate = gate_config(manifest, str(folder / MANIFEST))
    cfg = model_config(folder, trust_remote_code=trust_remote_code, device=device, dtype=dtype)
    model = load_model(cfg, device=cfg.device)
    mixture = attach_mixture(model, [read_peft_expert(path, name) for name, path in experts], gate)
    try:
        gates = load_file(str(folder / GATES), device=str(model.device))
        check_gates_header(folder / GATES, mixture)
    except (OSError, SafetensorError) as e:
        raise MixtureError(f"{folder / GATES}: cannot read the gates ({e})") from None
    mixture.load_gate_state_dict(gates, str(folder / GATES))
    return model.requires_grad_(False).eval()  # inference: gates frozen too, so the fused fast path applies


def load_artifact_tokenizer(folder: str | Path, *, trust_remote_code: bool = False):
    from ..data.collate import ensure_chat_template

    cfg = model_config(folder, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(cfg)
    ensure_chat_template(tokenizer, cfg.chat_template_fallback, cfg.name_or_path)
    return tokenizer
