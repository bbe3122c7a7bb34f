"""Loss functions, each small and unit-tested against hand-worked numbers."""

from .preference import DPOOutput, gate_regulariser, preference_margin, sequence_logps, spe_dpo_loss
from .routing import gate_entropy, load_balance, routing_regulariser

__all__ = [
    "DPOOutput",
    "gate_entropy",
    "gate_regulariser",
    "load_balance",
    "preference_margin",
    "routing_regulariser",
    "sequence_logps",
    "spe_dpo_loss",
]
