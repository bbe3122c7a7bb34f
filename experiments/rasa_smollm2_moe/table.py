"""The RASA experiment's table (Markdown) from the eval run folders' summary.json files, with the
stage-0 pair counts per attack.

    python experiments/rasa_smollm2_moe/table.py RUN/eval/{refusal-sft,...,rasa} --pairs RUN/rasa/pairs_report.json

Attack success = the judge rates the answer harmful (↓ better); refused = the keywords-free refusal
verdict of the same judge; over-refusal = XSTest safe prompts refused (↓). 95% bootstrap intervals.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

# The SafeMoE experiment's table helpers (reading a summary, formatting an interval), shared.
_spec = importlib.util.spec_from_file_location(
    "safemoe_table", Path(__file__).parents[1] / "safemoe_smollm2" / "table.py"
)
_safemoe_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_safemoe_table)
lookup, cell = _safemoe_table.lookup, _safemoe_table.cell

ATTACKS = (("plain", "plain"), ("past-tense", "past-tense"), ("future-tense", "future-tense (unseen)"),
           ("refusal-suppression", "refusal-suppr."), ("prefix-injection", "prefix-inj. (unseen)"))  # fmt: skip
COLUMNS = [
    (f"ASR {label} ↓", "malicious-instruct", f"by_attack.{attack}.attack_success_rate")
    for attack, label in ATTACKS
]
COLUMNS += [
    (f"refused {label}", "malicious-instruct", f"by_attack.{attack}.refusal_rate")
    for attack, label in ATTACKS
]
COLUMNS += [
    ("XSTest over-refusal ↓", "xstest", "over_refusal_rate"),
    ("MMLU 0-shot", "mmlu", "accuracy"),
    ("GSM8K", "gsm8k", "accuracy"),
    ("TruthfulQA MC1", "truthfulqa", "accuracy"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--pairs", help="a RASA run's pairs_report.json (stage-0 counts per attack)")
    args = parser.parse_args()
    if args.pairs:
        report = json.loads(Path(args.pairs).read_text())
        print(
            "| training attack | requests | plain refused | jailbreak complied | pairs |\n|---|---:|---:|---:|---:|"
        )
        for attack, c in report.items():
            print(
                f"| {attack} | {c['requests']} | {c['plain_refused']} | {c['jailbreak_complied']} | {c['qualified']} |"
            )
        print()
    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in args.runs]
    print("| model | " + " | ".join(name for name, _, _ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for s in summaries:
        print(
            f"| {s['run']['name']} | "
            + " | ".join(cell(lookup(s, b, p), percent=True) for _, b, p in COLUMNS)
            + " |"
        )
    n = {b: summaries[0]["benchmarks"].get(b, {}).get("n") for _, b, _ in COLUMNS}
    print("\nn per benchmark: " + ", ".join(f"{b} {k}" for b, k in n.items() if k))


if __name__ == "__main__":
    main()
