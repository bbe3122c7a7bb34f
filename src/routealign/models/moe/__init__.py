"""Mixture-of-experts models as transformers 5 builds them: one view of their layers (:mod:`.view`),
routing traces (:mod:`.trace`) and trainable deltas for chosen experts (:mod:`.deltas`)."""

from .deltas import DELTA_NAME, ExpertDelta, expert_deltas, merge_deltas, merged_state_dict
from .trace import RouterTrace, expert_counts
from .view import MoEFamily, MoELayer, MoEView, base_model, families, moe_view

__all__ = [
    "DELTA_NAME",
    "ExpertDelta",
    "MoEFamily",
    "MoELayer",
    "MoEView",
    "RouterTrace",
    "base_model",
    "expert_counts",
    "expert_deltas",
    "families",
    "merge_deltas",
    "merged_state_dict",
    "moe_view",
]
