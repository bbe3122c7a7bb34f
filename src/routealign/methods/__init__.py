"""The methods routealign ships, one package each, registered with the recipe contract
(:mod:`routealign.recipe`). Adding a method: a package here with its config, ``prepare``, stages and a
``RECIPE``, and one ``register`` line below."""

from __future__ import annotations

from ..config import ConfigError, load_config, read_yaml
from ..recipe import RECIPES, RecipeConfig, register
from . import midpo, rasa, safemoe

register(safemoe.RECIPE)
register(midpo.RECIPE)
register(rasa.RECIPE)


def load_recipe_config(path: str, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe config; its ``recipe`` key says which registered recipe's config class it fills."""
    name = read_yaml(path).get("recipe")
    if name not in RECIPES:
        raise ConfigError(f"{path}: recipe: must be one of {', '.join(RECIPES)}, got {name!r}")
    return load_config(RECIPES[name].config, path, overrides)


__all__ = ["RECIPES", "load_recipe_config"]
