"""The experiment's five models as eval folders rebuilt from the labelled answers, ready for `routealign compare`.

Every safety answer of the experiment is stored, with its label, in
experiments/judge_labels/experiment-test.jsonl (GUIDE.md). This script plans the experiment's eval
config again (the same items, ids, attacks and prompts, from ../shared/data), checks each label's prompt
hash against the planned prompt, and writes one folder per model and verdict source:

* ``OUT/labels/<model>``: ``refused`` / ``harmful`` from the labels (judge "labels");
* ``OUT/minilm/<model>``: the same answers judged now by the packaged ``minilm`` judge (whose head was
  fitted on these labels in round 2, so it is in-sample here);

each with ``samples.jsonl`` (informativeness scored as the runner scores it) and ``summary.json``. The
capability benchmarks' rows were not kept, so they are not in these folders. Then, for example:

    python experiments/safemoe_smollm2/labelled_runs.py --shared ../shared/data --out runs/exp-safemoe/labelled
    routealign compare runs/exp-safemoe/labelled/labels/{base,erasure,safemoe-token,safemoe-sequence} \
        --reference runs/exp-safemoe/labelled/labels/base --output runs/exp-safemoe/labelled/compare-base
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from routealign.evaluation.metrics import SAMPLES, summarize, write_summary
from routealign.evaluation.runner import load_eval_config, plan_eval
from routealign.io import atomic_write_text

HERE = Path(__file__).resolve().parent
LABELS = HERE.parent / "judge_labels" / "experiment-test.jsonl"
MODELS = ("base", "erasure", "safemoe-token", "safemoe-sequence", "safemoe-ldo")
LDO_BENCHMARKS = ("jbb-heldout-domains",)  # the leave-domains-out model answered only these


def planned_rows(shared: str) -> list[dict]:
    """The eval config's safety rows, planned from the public data (prompt files rebuilt by prepare.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(HERE / "prepare.py"), "--shared", shared, "--out", tmp], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        text = (HERE / "eval.yaml").read_text(encoding="utf-8").replace("../shared/data", shared)
        config = Path(tmp) / "eval.yaml"
        config.write_text(text.replace("runs/exp-safemoe/data", tmp), encoding="utf-8")
        # Only the prompts are read: the embedded model needs nothing pulled, and no model is loaded.
        cfg = load_eval_config(
            str(config), ["judge=refusal-keywords", "model.name_or_path=smollm2-135m-instruct"]
        )
        return [{k: v for k, v in row.items() if k != "_messages"} for row in plan_eval(cfg).rows]


def labelled_rows(model: str, planned: list[dict], labels: dict[str, dict], used: set[str]) -> list[dict]:
    rows = []
    for row in planned:
        if model == "safemoe-ldo" and row["benchmark"] not in LDO_BENCHMARKS:
            continue
        key = f"{model}/{row['benchmark']}/{row['attack']}/{row['id']}"
        label = labels.get(key)
        if label is None:
            raise ValueError(f"{LABELS}: no label for {key}")
        if hashlib.sha256(row["plain_prompt"].encode("utf-8")).hexdigest() != label["prompt_sha256"]:
            raise ValueError(f"{LABELS}: the prompt of {key} is not the planned one")
        used.add(key)
        rows.append({**row, "response": label["response"], "refused": label["refusal"] != "none",
                     "harmful": label["harmful"], "score": float(label["harmful"]), "reason": "label",
                     "unparseable": False, "routing": None})  # fmt: skip
    return rows


def score_informativeness(rows: list[dict]) -> None:
    """Cosine similarity of answer and reference answer (all-MiniLM-L6-v2), as the eval runner scores it."""
    from routealign.judges.encoder import SentenceEncoder

    have = [r for r in rows if r.get("_reference")]
    encoder = SentenceEncoder()
    answers = encoder.encode([r["response"] for r in have])
    references = encoder.encode([r["_reference"] for r in have])
    for row, sim in zip(have, (answers * references).sum(-1).tolist(), strict=True):
        row["informativeness"] = max(0.0, float(sim))
    for row in rows:
        row.setdefault("informativeness", None)


def write_run(folder: Path, name: str, judge: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != "_reference"} for r in rows]
    atomic_write_text(folder / SAMPLES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    run = {"name": name, "model": name, "judge": judge, "seed": 0, "config": {"seed": 0, "bootstrap_resamples": 1000},
           "source": f"answers and labels of {LABELS.name}"}  # fmt: skip
    write_summary(folder, summarize(rows, run))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(LABELS, encoding="utf-8") as f:
        labels = {row["id"]: row for row in map(json.loads, f)}
    planned, used = planned_rows(os.path.abspath(args.shared)), set()
    from routealign.judges import JudgeInput, get_judge

    judge = get_judge("minilm")
    for model in MODELS:
        rows = labelled_rows(model, planned, labels, used)
        score_informativeness(rows)
        write_run(Path(args.out) / "labels" / model, model, "labels", rows)
        verdicts = judge.judge([JudgeInput(r["plain_prompt"], r["response"]) for r in rows])
        judged = [{**r, "refused": v.refused, "harmful": v.harmful, "score": v.score, "reason": v.reason,
                   "unparseable": v.unparseable} for r, v in zip(rows, verdicts, strict=True)]  # fmt: skip
        write_run(Path(args.out) / "minilm" / model, model, "minilm", judged)
        print(f"{model}: {len(rows)} answers → {args.out}/{{labels,minilm}}/{model}")
    unused = sorted(set(labels) - used)
    if unused:
        raise ValueError(f"{len(unused)} labels of {LABELS} matched no planned item (first: {unused[0]})")


if __name__ == "__main__":
    main()
