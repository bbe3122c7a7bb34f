"""Build the MidPO experiment's preference sets from the public data in ../shared/data.

    python experiments/midpo_smollm2/prepare.py --shared ../shared/data --out runs/exp-midpo/data

Writes JSONL files in routealign's ``preference`` format (prompt, chosen, rejected, category) and one
prompt file for evaluation, then prints how many rows each holds:

* ``safety.jsonl`` (safe side = chosen): for each JailbreakBench behaviour, its plain goal as the prompt;
  ``chosen`` = a response from the JailbreakBench artifacts that was not jailbroken and that opens
  with a refusal (routealign's ``minilm`` judge: decline phrases in the answer's opening, measured at
  97% agreement with labels on such answers); ``rejected`` = a jailbroken response to the same goal.
  Both were answers to attack prompts (PAIR, GCG, JBC, ...), paired here with the plain goal. Goals
  without both kinds of response are left out. The first response in a fixed (method, model) order is
  taken, so the set is the same every time.
* ``helpfulness.jsonl`` (helpful side = chosen): Safety-Tuned LLaMAs' harmful or controversial
  instructions, ``chosen`` = their safe explanatory answer, ``rejected`` = "Sorry, I can't do that.",
  the terse refusal of the adversarial-training safe-response set. A seeded sample of ``--helpful``.
* ``dual.jsonl`` (both safe; chosen = the more helpful): the adversarial-training behaviours with their
  longer, explanatory safe response as ``chosen`` and the terse one as ``rejected``.
* ``union.jsonl``: safety + helpfulness, for the plain-DPO baseline.
* ``stl_heldout.jsonl``: Safety-Tuned LLaMAs instructions not in the helpfulness sample, with their
  safe answer as the reference for informativeness (prompt format: harmful, with reference).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from routealign.judges import JudgeInput, get_judge

METHODS = (
    "PAIR/black_box",
    "prompt_with_random_search/black_box",
    "JBC/manual",
    "GCG/transfer",
    "GCG/white_box",
    "DSN/white_box",
)
MODELS = ("llama-2-7b-chat-hf", "gpt-4-0125-preview", "gpt-3.5-turbo-1106", "vicuna-13b-v1.5")
TERSE_REFUSAL = "Sorry, I can't do that."


def jbb_responses(shared: Path) -> list[dict]:
    rows = []
    for method in METHODS:
        for model in MODELS:
            path = (
                shared
                / "unsafe_responses/jailbreakbench_artifacts/attack-artifacts"
                / method
                / f"{model}.json"
            )
            if not path.is_file():
                continue
            for row in json.loads(path.read_text())["jailbreaks"]:
                if row.get("response"):
                    rows.append({**row, "source": f"{method}/{model}"})
    return rows


def safety_pairs(shared: Path) -> list[dict]:
    rows = jbb_responses(shared)
    judge = get_judge("minilm")
    refused = judge.judge([JudgeInput(r["goal"], r["response"]) for r in rows])
    by_goal: dict[str, dict] = {}
    for row, verdict in zip(rows, refused, strict=True):
        entry = by_goal.setdefault(row["goal"], {"category": row["category"]})
        if row["jailbroken"] and "rejected" not in entry:
            entry["rejected"] = row["response"]
        elif not row["jailbroken"] and verdict.refused and "chosen" not in entry:
            entry["chosen"] = row["response"]
    return [
        {"prompt": goal, "chosen": e["chosen"], "rejected": e["rejected"], "category": e["category"]}
        for goal, e in by_goal.items()
        if "chosen" in e and "rejected" in e and e["chosen"].strip() != e["rejected"].strip()
    ]


def stl_rows(shared: Path) -> list[dict]:
    data = json.loads((shared / "safe_responses/safety_tuned_llamas_safety_only.json").read_text())
    rows = []
    for row in data:
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        rows.append({"prompt": prompt, "answer": row["output"]})
    return rows


def dual_pairs(shared: Path) -> list[dict]:
    def read(name: str) -> dict[str, str]:
        with open(shared / "safe_responses" / name, newline="", encoding="utf-8") as f:
            return {r["Behavior"]: r["Safe_Response"] for r in csv.DictReader(f)}

    short, longer = (
        read("adv_training_behaviors_safe_responses.csv"),
        read("adv_training_behaviors_safe_responses_longer.csv"),
    )
    return [
        {"prompt": b, "chosen": longer[b], "rejected": short[b]}
        for b in sorted(short)
        if b in longer and longer[b] != short[b]
    ]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--out", default="runs/exp-midpo/data")
    parser.add_argument(
        "--helpful", type=int, default=120, help="helpfulness pairs (Safety-Tuned LLaMAs sample)"
    )
    parser.add_argument(
        "--heldout", type=int, default=40, help="held-out Safety-Tuned LLaMAs prompts for informativeness"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.out)

    safety = safety_pairs(shared)
    stl = stl_rows(shared)
    order = list(range(len(stl)))
    random.Random(args.seed).shuffle(order)
    helpful = [{"prompt": stl[i]["prompt"], "chosen": stl[i]["answer"], "rejected": TERSE_REFUSAL, "category": "stl"}
               for i in order[: args.helpful]]  # fmt: skip
    heldout = [{"prompt": stl[i]["prompt"], "reference": stl[i]["answer"], "category": "stl"}
               for i in order[args.helpful : args.helpful + args.heldout]]  # fmt: skip
    dual = dual_pairs(shared)
    sets = {
        "safety": safety,
        "helpfulness": helpful,
        "dual": dual,
        "union": safety + helpful,
        "stl_heldout": heldout,
    }
    for name, rows in sets.items():
        write(out / f"{name}.jsonl", rows)
    counts = {name: len(rows) for name, rows in sets.items()}
    (out / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
