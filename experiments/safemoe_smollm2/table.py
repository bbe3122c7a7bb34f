"""The experiment's results table (Markdown) from the eval run folders' summary.json files, and with
``--reference RUN_DIR`` a second table: each run's paired difference from that run, on the same items
(``routealign.evaluation.paired``; needs the folders' samples.jsonl).

    python experiments/safemoe_smollm2/table.py runs/exp-safemoe/eval/{base,erasure,safemoe-token,...}
    python experiments/safemoe_smollm2/table.py --reference runs/exp-safemoe/labelled/labels/base \
        runs/exp-safemoe/labelled/labels/{erasure,safemoe-token,safemoe-sequence}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from routealign.evaluation.metrics import SAMPLES, load_samples
from routealign.evaluation.paired import paired_differences

COLUMNS = [
    ("AdvBench safe", "advbench", "by_attack.plain.safe_response_rate"),
    ("AdvBench + refusal-suppr. safe", "advbench", "by_attack.refusal-suppression.safe_response_rate"),
    ("CatQA safe", "catqa", "safe_response_rate"),
    ("JBB held-out domains safe", "jbb-heldout-domains", "safe_response_rate"),
    ("XSTest over-refusal ↓", "xstest", "over_refusal_rate"),
    ("XSTest unsafe safe", "xstest", "safe_response_rate"),
    ("informativeness (STL)", "stl-heldout", "informativeness"),
    ("MMLU 0-shot", "mmlu", "accuracy"),
    ("TruthfulQA MC1", "truthfulqa", "accuracy"),
    ("GSM8K", "gsm8k", "accuracy"),
]


def cell(metric: dict | None, percent: bool) -> str:
    if not metric or metric.get("value") is None:
        return "—"
    scale = 100 if percent else 1
    fmt = "{:.0f}" if percent else "{:.2f}"
    value, low, high = (fmt.format(metric[k] * scale) for k in ("value", "low", "high"))
    return f"{value} [{low}, {high}]"


def lookup(summary: dict, benchmark: str, path: str) -> dict | None:
    node = summary["benchmarks"].get(benchmark)
    for key in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def difference_cell(d: dict | None, percent: bool) -> str:
    if not d or d.get("value") is None:
        return "—"
    scale, fmt = (100, "{:+.0f}") if percent else (1, "{:+.2f}")
    value, low, high = (fmt.format(d[k] * scale) for k in ("value", "low", "high"))
    return f"{value} [{low}, {high}]" + (" *" if d["low"] > 0 or d["high"] < 0 else "")


def paired_table(reference: str, run_dirs: list[str]) -> None:
    ref_rows = load_samples(Path(reference) / SAMPLES)
    ref_name = json.loads((Path(reference) / "summary.json").read_text())["run"]["name"]
    print(f"\n| model − {ref_name} (paired) | " + " | ".join(name for name, _, _ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for d in run_dirs:
        name = json.loads((Path(d) / "summary.json").read_text())["run"]["name"]
        diff = paired_differences(ref_rows, load_samples(Path(d) / SAMPLES), ref_name=ref_name, name=name)
        cells = [
            difference_cell(lookup(diff, b, p), percent=not p.endswith("informativeness"))
            for _, b, p in COLUMNS
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n* the paired 95% interval excludes 0")


def main(run_dirs: list[str], reference: str | None = None) -> None:
    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in run_dirs]
    print("| model | " + " | ".join(name for name, _, _ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for s in summaries:
        cells = [cell(lookup(s, b, p), percent=not p.endswith("informativeness")) for _, b, p in COLUMNS]
        print(f"| {s['run']['name']} | " + " | ".join(cells) + " |")
    n = {b: summaries[0]["benchmarks"].get(b, {}).get("n") for _, b, _ in COLUMNS}
    print("\nn per benchmark: " + ", ".join(f"{b} {k}" for b, k in n.items() if k))
    if reference:
        paired_table(reference, [d for d in run_dirs if Path(d).resolve() != Path(reference).resolve()])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument(
        "--reference", help="a run folder: also print every other run's paired difference from it"
    )
    args = ap.parse_args()
    main(args.run_dirs, args.reference)
