"""Measure judges' agreement with the labelled sets, per question, with 95% Wilson intervals.

    python experiments/judge_labels/measure.py --labels runs/judge-labels --shared ../shared/data \
        --judge minilm --judge refusal-keywords [--set test-small --set test-big ...] [--json out.json]

`--error-out FOLDER` writes each judge's confusion counts per set as a judge-error file,
FOLDER/JUDGE/error-SET.json; the shipped `data_files/judges/{minilm,mpnet}/error-*.json` are its output on
qwen-test, test2-small and test-big.

Sets: the files assemble.py wrote (fit, fit-big, test-small, test-big, test2-small; by default the sets
the shipped head was never fitted on: test2-small, test-big) and `pyrit-objective` (PyRIT's
objective/*.csv human labels). Each judge's verdicts on a set are computed once (and timed: answers per
second on this machine) and compared with the labels: `refused` on every row, `harmful` on the items of harmful benchmarks (the rows a safe-response
rate is computed from); rows are also broken down by group (model or artifact).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

from routealign.io import atomic_write_json
from routealign.judges import JudgeInput, get_judge
from routealign.judges.labelled import agreement, read_labelled


def load_set(name: str, labels: str, shared: str) -> list[tuple[str, str, object]]:
    """[(group, request kind, LabelledPair)] for one set; the kind is the benchmark's item label."""
    if name == "pyrit-objective":
        path = os.path.join(shared, "judge_calibration/pyrit_scorer_evals/objective")
        return [("pyrit-objective", "harmful", p) for p in read_labelled(f"pyrit-objective={path}")]
    path = os.path.join(labels, f"{name}.jsonl")
    with open(path, encoding="utf-8") as f:
        meta = [json.loads(line) for line in f if line.strip()]
    pairs = read_labelled(f"labelled={path}")
    return [(m["group"], m["request"], p) for m, p in zip(meta, pairs, strict=True)]


QUESTIONS = {
    "refused": ("refused", lambda kind: True),
    # What the safe-response rate is computed from: verdicts on the items of harmful benchmarks.
    "harmful": ("harmful", lambda kind: kind == "harmful"),
}


def measure(judge_name: str, rows: list[tuple[str, str, object]], options: dict | None = None) -> dict:
    judge = get_judge(judge_name, **(options or {}))
    start = time.perf_counter()
    verdicts = judge.judge([JudgeInput(p.prompt, p.response) for _, _, p in rows])
    result = {"answers_per_second": len(rows) / (time.perf_counter() - start)}
    for question, (task, keep) in QUESTIONS.items():
        idx = [i for i, (_, kind, p) in enumerate(rows) if getattr(p, task) is not None and keep(kind)]
        if not idx:
            continue
        overall = agreement(
            [getattr(verdicts[i], task) for i in idx], [getattr(rows[i][2], task) for i in idx]
        )
        by_group = defaultdict(list)
        for i in idx:
            by_group[rows[i][0]].append(i)
        overall["groups"] = {
            g: agreement([getattr(verdicts[i], task) for i in ids], [getattr(rows[i][2], task) for i in ids])
            for g, ids in sorted(by_group.items())
        }
        result[question] = overall
    return result


def labeller_agreement(second: str) -> dict:
    """Agreement of a second, independent labelling pass with the first, per first-pass label file."""
    from assemble import HERE, SETS

    first = {}
    for name in SETS.values():
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            first.update({row["id"]: (name, row) for row in map(json.loads, f)})
    by_file, seen = defaultdict(list), set()
    with open(second, encoding="utf-8") as f:
        for n, row in enumerate(map(json.loads, f), start=1):
            if row["id"] not in first or row["id"] in seen:
                raise ValueError(f"{second}, row {n}: {row['id']!r} has no first label, or comes twice")
            if row.get("refusal") not in ("full", "partial", "none") or not isinstance(
                row.get("harmful"), bool
            ):
                raise ValueError(
                    f"{second}, row {n}: fields 'refusal' (full/partial/none) and 'harmful' (bool)"
                )
            seen.add(row["id"])
            name, one = first[row["id"]]
            by_file[name].append((one, row))
    return {
        name: {
            "refused": agreement(
                [b["refusal"] != "none" for _, b in pairs], [a["refusal"] != "none" for a, _ in pairs]
            ),
            "harmful": agreement([b["harmful"] for _, b in pairs], [a["harmful"] for a, _ in pairs]),
        }
        for name, pairs in sorted(by_file.items())
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", default="runs/judge-labels")
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--judge", action="append", default=[], help="NAME or NAME:JSON_OPTIONS")
    ap.add_argument("--set", action="append", dest="sets", default=None)
    ap.add_argument("--groups", action="store_true", help="print the per-group breakdown")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument(
        "--error-out",
        help="write each judge's confusion counts per set here, as JUDGE/error-SET.json "
        "(the judge-error files `routealign report/compare --judge-error` read)",
    )
    ap.add_argument(
        "--second-pass",
        help="a second labelling pass (second-pass.jsonl): print its agreement with the first",
    )
    args = ap.parse_args()
    if args.second_pass:
        for name, r in labeller_agreement(args.second_pass).items():
            for task, m in r.items():
                print(
                    f"labellers {name:24s} {task:8s} {m['accuracy']:6.1%} [{m['low']:.1%}, {m['high']:.1%}] n={m['n']}"
                )
    sets = args.sets or ["test2-small", "test-big", "pyrit-objective"]
    results = {}
    for set_name in sets if args.judge else []:
        rows = load_set(set_name, args.labels, args.shared)
        for spec in args.judge:
            name, _, opts = spec.partition(":")
            r = results.setdefault(set_name, {})[spec] = measure(
                name, rows, json.loads(opts) if opts else None
            )
            print(f"{set_name:16s} {spec:28s} {r['answers_per_second']:.1f} answers/s")
            if args.error_out:
                counts = {q: {k: r[q][k] for k in ("tp", "fn", "tn", "fp")} for q in QUESTIONS if q in r}
                os.makedirs(os.path.join(args.error_out, name), exist_ok=True)
                atomic_write_json(
                    os.path.join(args.error_out, name, f"error-{set_name}.json"),
                    {"judge": name, "label_set": set_name, **counts},
                )
            for task, m in r.items():
                if task == "answers_per_second":
                    continue
                print(
                    f"{set_name:16s} {spec:28s} {task:8s} {m['accuracy']:6.1%} [{m['low']:.1%}, {m['high']:.1%}] "
                    f"n={m['n']} fp={m['fp']} fn={m['fn']}"
                )
                if args.groups:
                    for g, gm in m["groups"].items():
                        print(
                            f"{'':18s}{g:40s} {gm['accuracy']:6.1%} n={gm['n']} fp={gm['fp']} fn={gm['fn']}"
                        )
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
