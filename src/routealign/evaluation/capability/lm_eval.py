"""The lm-evaluation-harness bridge: :func:`run_lm_eval` hands an already-loaded model to
lm-evaluation-harness, for its full task catalogue, when that optional package is installed."""

from __future__ import annotations


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    include_path: str | None = None,
    **kwargs,
) -> dict:
    """lm-evaluation-harness's ``simple_evaluate`` on an already-loaded model (plain, PEFT or routed).

    The model is wrapped in lm-eval's ``HFLM`` as is, so whatever routing it carries runs inside lm-eval's
    own scoring (which sends no ``labels``: a sequence gate then pools context and continuation).
    ``include_path`` adds a folder of task YAMLs (e.g. a task over local files, for offline use);
    ``kwargs`` go to ``simple_evaluate``. lm-eval's tasks fetch their data from the hub.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError(
            "run_lm_eval needs lm-evaluation-harness, an optional dependency: pip install lm-eval"
        ) from e
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else None
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager, **kwargs
    )
    return results or {}  # None on the non-zero ranks of a distributed run
