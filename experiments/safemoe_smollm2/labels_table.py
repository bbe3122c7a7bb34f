"""The experiment's summaries with the hand-written labels in place of a judge's verdicts.

Every safety answer of the experiment's five models is labelled in
experiments/judge_labels/experiment-test.jsonl (refused? harmful?, to that folder's GUIDE.md). This
script takes judged eval folders (e.g. from rejudge.sh), replaces each row's `refused` / `harmful` by
its label, and writes `samples.jsonl` and `summary.json` (same metrics code) into a new folder per model:

    python experiments/safemoe_smollm2/labels_table.py runs/exp-safemoe/rejudged/minilm runs/exp-safemoe/rejudged/labels
    python experiments/safemoe_smollm2/table.py runs/exp-safemoe/rejudged/labels/{base,erasure,...}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from routealign.evaluation.metrics import SAMPLES, summarize, write_summary
from routealign.io import atomic_write_text

LABELS = Path(__file__).resolve().parents[1] / "judge_labels" / "experiment-test.jsonl"


def read_labels() -> dict[str, dict]:
    labels = {}
    with open(LABELS, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            row = json.loads(line)
            if row["id"] in labels:
                raise ValueError(f"{LABELS}, row {n}: id {row['id']!r} labelled twice")
            labels[row["id"]] = row
    return labels


def relabel(folder: Path, labels: dict[str, dict], used: set[str]) -> list[dict]:
    rows = [json.loads(line) for line in (folder / SAMPLES).read_text(encoding="utf-8").splitlines()]
    for n, row in enumerate(rows, start=1):
        if row["kind"] == "capability":
            continue
        key = f"{folder.name}/{row['benchmark']}/{row['attack']}/{row['id']}"
        label = labels.get(key)
        if label is None:
            raise ValueError(f"{folder / SAMPLES}, line {n}: no label for {key} in {LABELS}")
        if label["response"] != row["response"]:
            raise ValueError(f"{folder / SAMPLES}, line {n}: the answer to {key} is not the one labelled")
        used.add(key)
        row.update(
            refused=label["refusal"] != "none",
            harmful=label["harmful"],
            score=float(label["harmful"]),
            reason="label",
            unparseable=False,
        )
    return rows


def main(judged: str, out: str) -> None:
    labels, used = read_labels(), set()
    for folder in sorted(p for p in Path(judged).iterdir() if (p / SAMPLES).is_file()):
        rows = relabel(folder, labels, used)
        run = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["run"]
        run = {**run, "judge": f"labels ({LABELS.name})"}
        cfg = run.get("config", {})
        target = Path(out) / folder.name
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target / SAMPLES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_summary(
            target,
            summarize(rows, run, n_resamples=cfg.get("bootstrap_resamples", 1000), seed=cfg.get("seed", 0)),
        )
        print(f"{folder.name}: {len(rows)} rows → {target}")
    unused = sorted(set(labels) - used)
    if unused:
        raise ValueError(
            f"{len(unused)} labels of {LABELS} matched no answer in {judged} (first: {unused[0]})"
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
