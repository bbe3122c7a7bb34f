"""RASA (arXiv 2602.04448): in a mixture-of-experts model, find the experts jailbreaks light up (stages
0 and 1: :mod:`.pairs`, :mod:`.selection`), repair only those with routing fixed and train the routers so
a jailbreak routes like the plain request (stages 2 and 3: :mod:`.repair`). The recipe is :mod:`.recipe`,
its config :mod:`.config`."""

from .config import PairsStage, RASAConfig, RepairStage, RoutingStage, SelectionStage
from .recipe import RECIPE, main, prepare

__all__ = [
    "RECIPE",
    "PairsStage",
    "RASAConfig",
    "RepairStage",
    "RoutingStage",
    "SelectionStage",
    "main",
    "prepare",
]
