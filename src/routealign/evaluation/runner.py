"""``routealign eval --config FILE``: plan, claim the folder, load, answer, judge; samples, summary, report.

A run goes in this order, so that a mistake costs a second, not a model load or hours of generation:

1. **plan** (:func:`plan_eval`): every benchmark is read and every attack built and applied; the judge's
   name and options (against its constructor's signature), column mappings, categories and local paths
   are checked, and a judge without weights is built. No model is loaded.
2. **claim** the output folder (:func:`routealign.io.folder_lock`, main process): a second run writing
   the same folder fails at once instead of mixing its files with this one's.
3. **load** the model and fingerprint it (:mod:`routealign.evaluation.fingerprint`): the model's part of
   the answer cache's key, so retrained weights, another dtype or chat template are answered afresh.
4. **generate** the answers the cache lacks, under a progress bar; under ``accelerate launch`` the
   prompts are split over the processes.
5. **judge**, score informativeness and run the capability benchmarks once, on the main process and its
   device; the other processes stop after generating.

One run directory per evaluated model, written by the main process only:

* ``samples.jsonl``: one row per judged answer or capability item (the schema is in
  :mod:`routealign.evaluation.metrics`),
* ``summary.json``: metrics with 95% intervals, per benchmark, attack and category; its
  ``run`` block records the model's fingerprint (what was evaluated) and the resolved config,
* ``report.md`` / ``report.html`` with plots,
* ``config.yaml``: the resolved config; ``generations.jsonl``: the answer cache (delete it to regenerate).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import yaml

from ..config import ConfigError
from ..distributed import claimed, on_main
from .eval_config import APIConfig, BenchmarkEntry, EvalConfig, load_eval_config
from .generate import (
    GENERATIONS,
    GenerationCache,
    HFBackend,
    OpenAIBackend,
    generate_all,
    process_state,
)
from .plan import Plan, named_errors, plan_eval

log = logging.getLogger(__name__)

__all__ = ["APIConfig", "BenchmarkEntry", "EvalConfig", "Plan", "load_eval_config", "plan_eval", "run_eval"]


def run_eval(cfg: EvalConfig) -> Path:
    """Evaluate, write the run directory, return its path."""
    from .metrics import is_eval_folder

    plan = plan_eval(cfg)  # every name, path, column and option, before anything is loaded or claimed
    out = Path(cfg.output_dir)
    state = process_state()
    try:
        with claimed(out, "evaluation", state, lambda: _remove_stale_outputs(out), ours=is_eval_folder):
            return _run(cfg, plan, out, state)
    finally:
        # The other processes stop after generating, while the main one judges. Each leaves the process
        # group itself: a gloo group torn down only at interpreter exit can abort the process.
        if state.num_processes > 1:
            state.destroy_process_group()


def _run(cfg: EvalConfig, plan: Plan, out: Path, state) -> Path:
    from .. import __version__
    from ..io import atomic_write_text
    from .metrics import SAMPLES, summarize, write_summary
    from .report import write_report

    if state.is_main_process:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    if plan.earlier is not None:
        if not state.is_main_process:
            return out  # nothing to generate: the main process judges
        earlier = plan.earlier
        model_id, model_kind = earlier.run.get("model", ""), earlier.run.get("model_kind", "")
        fingerprint, answers = earlier.run.get("fingerprint"), earlier.answers
        # The answers judged here go into this folder's own cache, so that it can be the answers_from of
        # a later run in turn.
        cache = GenerationCache(out / GENERATIONS)
        records = {a["record"]["key"]: a["record"] for a in answers}  # one prompt may be asked twice
        cache.add([record for key, record in records.items() if key not in cache.entries])
        from ..models.loading import pick_device

        # The answers may come from a GPU machine: the judge runs on whatever is here.
        device = str(pick_device("auto"))
    else:
        backend, model_id, model_kind, fingerprint = _backend(cfg, state)
        answers = []
        if plan.rows:
            cache = GenerationCache(out / GENERATIONS)
            prompts = [r["_messages"] or r["prompt"] for r in plan.rows]
            answers = generate_all(backend, prompts, cfg.generation, cache, progress="generating")
        if not state.is_main_process:
            return out  # judging, informativeness and capability run once, on the main process
        device = _eval_device(backend, state)
    rows = _judged_rows(cfg, plan, answers, device) if plan.rows else []
    if plan.earlier is not None:
        rows += plan.earlier.capability_rows
    else:
        for entry, options in plan.capability:
            rows += _capability_rows(entry, options, backend)
    run = {
        "name": cfg.name or out.name,
        "model": model_id,
        "model_kind": model_kind,
        "judge": cfg.judge,
        "fingerprint": fingerprint,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "routealign_version": __version__,
        "seed": cfg.seed,
        "config": asdict(cfg),
    }
    if plan.earlier is not None:
        run["answers_from"] = {
            "folder": plan.earlier.folder,
            "date": plan.earlier.run.get("date"),
            "judge": plan.earlier.run.get("judge"),
            "config": plan.earlier.run.get("config"),
            "generation": plan.earlier.generation,
        }
    text = "".join(_json_line(r) for r in rows)
    atomic_write_text(out / SAMPLES, text)
    run["samples_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()  # what answers_from checks
    summary = summarize(
        rows, run, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, unparseable=cfg.unparseable
    )
    if plan.reference is not None:
        from .paired import paired_differences

        ref_name, ref_rows = plan.reference
        # The safety items were checked in the plan; a capability benchmark run with other settings than
        # the reference's is left out (and named in "mismatched") rather than lose the run here.
        summary["paired"] = {"folder": cfg.reference, **paired_differences(
            ref_rows, rows, ref_name=ref_name, name=run["name"], policy=cfg.unparseable,
            n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, skip_mismatched=True)}  # fmt: skip
    write_summary(out, summary)
    write_report(out)
    return out


def _remove_stale_outputs(out: Path) -> None:
    """Under the folder's lock (the one writer): temporaries of killed writes can go."""
    from ..io import remove_stale_temps
    from .metrics import SAMPLES, SUMMARY

    for name in ("config.yaml", SAMPLES, SUMMARY, "report.md", "report.html"):
        remove_stale_temps(out / name)


def _backend(cfg: EvalConfig, state):
    """(backend, model shown in reports, model kind, fingerprint record)."""
    from .fingerprint import Fingerprint, api_fingerprint, hf_fingerprint

    if cfg.api is not None:
        backend = OpenAIBackend(cfg.api.base_url, cfg.api.model, api_key_env=cfg.api.api_key_env)
        return (
            backend,
            cfg.api.model,
            "api",
            {"id": backend.id, **api_fingerprint(cfg.api.base_url, cfg.api.model).parts},
        )
    from ..data.collate import ensure_chat_template
    from ..models.loading import load_model, load_tokenizer

    if state.num_processes > 1 and cfg.model.device == "auto":
        cfg.model.device = str(state.device)  # data parallel: each process answers on its own device
    if cfg.artifact:
        from ..models.artifact import load, load_artifact_tokenizer

        trust = cfg.model.trust_remote_code
        # auto = as the artifact's manifest says; only an explicit dtype overrides it.
        dtype = None if cfg.model.dtype == "auto" else cfg.model.dtype
        model = load(cfg.artifact, device=cfg.model.device, dtype=dtype, trust_remote_code=trust)
        tokenizer = load_artifact_tokenizer(cfg.artifact, trust_remote_code=trust)
        label, kind = cfg.artifact, "routealign"
    else:
        tokenizer = load_tokenizer(cfg.model)
        ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
        model = load_model(cfg.model, device=cfg.model.device)
        label, kind = cfg.model.name_or_path, "base"
        if cfg.adapter:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, cfg.adapter)
            except (
                OSError,
                ValueError,
                KeyError,
                RuntimeError,
            ) as e:  # PEFT: "not an adapter for this model"
                raise ConfigError(
                    f"adapter: cannot apply {cfg.adapter} to {cfg.model.name_or_path}: {e}"
                ) from e
            label, kind = cfg.adapter, "peft"
    # The main process hashes the files (memoised); the others take its result.
    fingerprint = Fingerprint(
        on_main(
            state,
            lambda: (
                hf_fingerprint(model, tokenizer, cfg.model, adapter=cfg.adapter, artifact=cfg.artifact).parts
            ),
        )
    )
    backend = HFBackend(model.eval(), tokenizer, fingerprint.id)
    return backend, label, kind, {"id": fingerprint.id, **fingerprint.parts}


def _eval_device(backend, state) -> str:
    """Where judges and encoders run: a loaded model's device; for a served model (whose ``model`` is
    the name it is served under), the main process's."""
    if isinstance(backend, HFBackend):
        return str(backend.model.device)
    return str(state.device)


def _judged_rows(cfg: EvalConfig, plan: Plan, answers: list[dict], device: str) -> list[dict]:
    from ..judges import JudgeInput, get_judge, judge_all

    pending = [dict(r) for r in plan.rows]
    for row, answer in zip(pending, answers, strict=True):
        row["response"], row["routing"] = answer["response"], answer["routing"]
    judge = plan.judge
    if judge is None:
        options = dict(cfg.judge_options)
        if (
            plan.judge_parameters is not None
            and "device" in plan.judge_parameters
            and "device" not in options
        ):
            options["device"] = device
        with named_errors("judge_options"):
            judge = get_judge(cfg.judge, **options)
    # The judge sees the plain request: a verdict is about whether the request was served, and the
    # attack's wrapping (base64, a persona, pages of demos) would only confuse it.
    verdicts = judge_all(
        judge, [JudgeInput(r["plain_prompt"], r["response"]) for r in pending], desc=f"judging ({cfg.judge})"
    )
    informativeness = _informativeness(pending, device) if cfg.informativeness else [None] * len(pending)
    rows = []
    for row, verdict, info in zip(pending, verdicts, informativeness, strict=True):
        row.pop("_messages")
        row.pop("_reference")
        rows.append(
            {
                **row,
                "refused": verdict.refused,
                "harmful": verdict.harmful,
                "score": verdict.score,
                "reason": verdict.reason,
                "unparseable": verdict.unparseable,
                "informativeness": info,
            }
        )
    return rows


def _informativeness(rows: list[dict], device: str = "cpu") -> list[float | None]:
    """Cosine similarity of answer and reference answer, where the item has a reference."""
    have = [i for i, r in enumerate(rows) if r["_reference"]]
    scores: list[float | None] = [None] * len(rows)
    if not have:
        return scores
    from ..judges.encoder import SentenceEncoder

    encoder = SentenceEncoder(device=device)
    answers = encoder.encode([rows[i]["response"] for i in have])
    references = encoder.encode([rows[i]["_reference"] for i in have])
    for i, sim in zip(have, (answers * references).sum(-1).tolist(), strict=True):
        scores[i] = max(0.0, float(sim))
    return scores


def _capability_rows(entry: BenchmarkEntry, options: dict, backend) -> list[dict]:
    from tqdm.auto import tqdm

    from .capability import run_capability

    name = entry.name_as or entry.name
    with tqdm(desc=name, unit="item", dynamic_ncols=True, mininterval=1.0) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = run_capability(entry.name, backend.model, backend.tokenizer, **options, progress=progress)
    return [
        {
            "benchmark": name,
            "kind": "capability",
            "id": str(r["id"]),
            "category": r.get("category"),
            "correct": bool(r["correct"]),
            "prediction": str(r["prediction"]),
            "target": str(r["target"]),
        }
        for r in result.rows
    ]


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"
