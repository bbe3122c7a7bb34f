"""RASA's saved stage results (stage 0's routing counts, the state stages 2 and 3 resume from), read back
with their checksums checked."""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import ConfigError
from ...io import DamagedFileError, load_safetensors


def load_state_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A saved stage result, checked against the checksum in its header (files of runs from before it
    existed have none). Damage is a user error naming the file: deleting it redoes that work, which is
    better than resuming from a corrupted state."""
    try:
        return load_safetensors(path, checksum="if-present")
    except DamagedFileError as e:
        raise ConfigError(f"{e}; delete it to redo the stages it holds") from None
