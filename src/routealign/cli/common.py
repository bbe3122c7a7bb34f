"""What the command handlers share."""

from __future__ import annotations

import os


def usage_error(message: str) -> Exception:
    from ..config import ConfigError

    return ConfigError(message)


def is_main_process() -> bool:
    # Under accelerate launch / torchrun every process runs this CLI; only rank 0 talks.
    return int(os.environ.get("RANK", "0")) == 0
