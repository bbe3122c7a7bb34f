"""One artifact folder per trained mixture, and ``routealign.load`` to bring it back.

Layout (every file written atomically; ``routealign.json`` last, so its presence means "complete")::

    ARTIFACT/
      routealign.json        manifest: recipe, resolved config, expert names → folders, gate config
      experts/<slug>/        one standard PEFT LoRA adapter folder per expert (PEFT alone can load it)
      gates.safetensors      the trained gate heads
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..config import GateConfig, ModelConfig, from_dict
from ..io import atomic_write_json
from .loading import load_model, load_tokenizer
from .mixture import Mixture, MixtureError, attach_mixture, read_peft_expert

MANIFEST = "routealign.json"
GATES = "gates.safetensors"
FORMAT_VERSION = 1


def save_gates(mixture: Mixture, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(mixture.gate_state_dict(), str(tmp))
    tmp.replace(path)


def write_manifest(folder: Path, *, recipe: str, config: dict, experts: list[dict], gate: GateConfig, model: ModelConfig) -> None:
    manifest = {
        "format": "routealign-artifact",
        "format_version": FORMAT_VERSION,
        "routealign_version": __version__,
        "recipe": recipe,
        "model": asdict(model),
        "experts": experts,
        "gate": asdict(gate),
        "config": config,
    }
    atomic_write_json(folder / MANIFEST, manifest)


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a routealign artifact ({MANIFEST} is missing; did training finish?)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != "routealign-artifact" or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise MixtureError(f"{path}: unknown artifact format {manifest.get('format')!r} v{manifest.get('format_version')}")
    return manifest


def model_config(folder: str | Path, **overrides) -> ModelConfig:
    data = dict(read_manifest(folder)["model"])
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(ModelConfig, data, "model")


def load(folder: str | Path, *, device: str | None = None, dtype: str | None = None) -> torch.nn.Module:
    """A transformers model with the artifact's experts and gates attached, in eval mode.

    ``model.generate`` works as usual; ``model.routealign_mixture`` is the handle for switching the
    experts off (``with model.routealign_mixture.mode("base"):``) and for reading the routing.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    cfg = model_config(folder, device=device, dtype=dtype)
    model = load_model(cfg, device=cfg.device)
    experts = [read_peft_expert(folder / e["path"], e["name"]) for e in manifest["experts"]]
    mixture = attach_mixture(model, experts, from_dict(GateConfig, manifest["gate"], "gate"))
    mixture.load_gate_state_dict(load_file(str(folder / GATES), device=str(model.device)), str(folder / GATES))
    return model.requires_grad_(False).eval()  # inference: gates frozen too, so the fused fast path applies


def load_artifact_tokenizer(folder: str | Path):
    from ..data.collate import ensure_chat_template

    cfg = model_config(folder)
    tokenizer = load_tokenizer(cfg)
    ensure_chat_template(tokenizer, cfg.chat_template_fallback, cfg.name_or_path)
    return tokenizer
