"""One file per method, each readable top to bottom with a ``main(cfg)``; this table picks by name."""

from __future__ import annotations

from types import ModuleType

from ..config import ConfigError, load_config, read_yaml
from . import midpo, rasa, safemoe

RECIPES: dict[str, ModuleType] = {"safemoe": safemoe, "midpo": midpo, "rasa": rasa}
CONFIG_CLASSES = {"safemoe": safemoe.SafeMoEConfig, "midpo": midpo.MidPOConfig, "rasa": rasa.RASAConfig}


def load_recipe_config(path: str, overrides: list[str] | None = None):
    """Read a recipe config; its ``recipe`` key says which dataclass it fills."""
    name = read_yaml(path).get("recipe")
    if name not in CONFIG_CLASSES:
        raise ConfigError(f"{path}: recipe: must be one of {', '.join(CONFIG_CLASSES)}, got {name!r}")
    return load_config(CONFIG_CLASSES[name], path, overrides)
