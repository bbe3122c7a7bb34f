"""Capability benchmarks (MMLU, GSM8K, TruthfulQA MC) scored as their papers and lm-evaluation-harness do.

Alignment must not cost general ability, so every routed model is also measured on three public sets,
each a module with its record type, loader, prompt and scorer: :mod:`.mmlu`, :mod:`.gsm8k` and
:mod:`.truthfulqa`. :func:`run_capability` (:mod:`.run`) runs one by name; :func:`run_lm_eval`
(:mod:`.lm_eval`) hands an already-loaded model to lm-evaluation-harness. The log-likelihood scorer is
:mod:`.likelihood`; the result type and the data helpers the sets share are in :mod:`.common`.
"""

from routealign.data.collate import IGNORE

from .common import CapabilityResult
from .gsm8k import (
    GSM8K_INSTRUCTION,
    MathProblem,
    _gsm8k_shots,
    evaluate_gsm8k,
    extract_number,
    gsm8k_messages,
    load_gsm8k,
    normalize_number,
)
from .likelihood import encode_pair, loglikelihood
from .lm_eval import run_lm_eval
from .mmlu import LETTERS, MCQuestion, evaluate_mmlu, load_mmlu, mmlu_prompt
from .run import CAPABILITIES, PROGRESS_BATCHES, CapabilityOptions, run_capability
from .truthfulqa import (
    TruthfulQuestion,
    evaluate_truthfulqa,
    load_truthfulqa,
    mc1_correct,
    mc2_score,
    truthfulqa_prompt,
)

__all__ = [
    "CAPABILITIES",
    "GSM8K_INSTRUCTION",
    "IGNORE",
    "LETTERS",
    "PROGRESS_BATCHES",
    "CapabilityOptions",
    "CapabilityResult",
    "MCQuestion",
    "MathProblem",
    "TruthfulQuestion",
    "_gsm8k_shots",
    "encode_pair",
    "evaluate_gsm8k",
    "evaluate_mmlu",
    "evaluate_truthfulqa",
    "extract_number",
    "gsm8k_messages",
    "load_gsm8k",
    "load_mmlu",
    "load_truthfulqa",
    "loglikelihood",
    "mc1_correct",
    "mc2_score",
    "mmlu_prompt",
    "normalize_number",
    "run_capability",
    "run_lm_eval",
    "truthfulqa_prompt",
]
