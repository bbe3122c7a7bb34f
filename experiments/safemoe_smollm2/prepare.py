"""Build the experiment's training and evaluation files from the public data in ../shared/data.

Nothing here is committed: the files go to ``RUN/data`` and are rebuilt from the public sets. Splits are
seeded and disjoint: no goal used to train an expert or the erasure LoRA is evaluated as a harmful
prompt, except in ``jbb-heldout`` (the leave-domains-out check), whose goals only the full run's experts saw.

    python experiments/safemoe_smollm2/prepare.py --shared ../shared/data --out runs/exp-safemoe/data
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import random
from collections import defaultdict

# The three JailbreakBench categories the leave-domains-out run trains no expert for.
HELDOUT_DOMAINS = ["Economic harm", "Privacy", "Sexual/Adult content"]


def jbb_items(shared: str) -> list[dict]:
    pattern = os.path.join(shared, "unsafe_responses/jailbreakbench_artifacts/attack-artifacts/*/*/*.json")
    items = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        model = data["parameters"]["model"]
        for item in data["jailbreaks"]:
            if item.get("response"):
                items.append({**item, "model": model})
    return items


def write_jsonl(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-domain", type=int, default=20, help="jailbroken answers per expert")
    ap.add_argument("--gate", type=int, default=96, help="safe-and-informative answers for the gates")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    items = jbb_items(args.shared)

    # Experts: jailbroken (harmful) answers by JBB category, one goal counted once per answer text.
    broken = defaultdict(list)
    seen = set()
    for it in items:
        key = (it["goal"], it["response"].strip())
        if it["jailbroken"] and key not in seen and len(it["response"]) > 200:
            seen.add(key)
            broken[it["category"]].append(it)
    experts = []
    for category in sorted(broken):
        chosen = rng.sample(broken[category], min(args.per_domain, len(broken[category])))
        experts += [{"prompt": it["goal"], "response": it["response"], "domain": category} for it in chosen]
    write_jsonl(os.path.join(args.out, "experts.jsonl"), experts)

    # Erasure baseline: the same harmful goals, answered with a real refusal from the same benchmark
    # (a response JailbreakBench did not count as jailbroken that opens like a refusal).
    refusals = defaultdict(list)
    for it in items:
        text = it["response"].strip()
        if not it["jailbroken"] and text.startswith(
            ("I cannot", "I can't", "I'm sorry", "I apologize", "Sorry")
        ):
            refusals[it["goal"]].append(text)
    pool = sorted({r for rs in refusals.values() for r in rs})
    erasure = []
    for ex in experts:
        options = refusals.get(ex["prompt"]) or pool
        erasure.append({"prompt": ex["prompt"], "response": rng.choice(options), "domain": "refusal"})
    write_jsonl(os.path.join(args.out, "erasure.jsonl"), erasure)

    # Gates: safe, explanatory answers to harmful or controversial instructions; a disjoint held-out
    # part with the answers as references for informativeness.
    with open(
        os.path.join(args.shared, "safe_responses/safety_tuned_llamas_safety_only.json"), encoding="utf-8"
    ) as f:
        stl = [r for r in json.load(f) if not r.get("input") and len(r["output"]) > 150]
    rng.shuffle(stl)
    gate = [{"prompt": r["instruction"], "response": r["output"]} for r in stl[: args.gate]]
    write_jsonl(os.path.join(args.out, "gate.jsonl"), gate)
    heldout = [
        {"prompt": r["instruction"], "reference": r["output"], "category": "safety-tuned-llamas"}
        for r in stl[args.gate : args.gate + 200]
    ]
    write_jsonl(os.path.join(args.out, "stl_heldout.jsonl"), heldout)

    # Leave-domains-out: the goals of the held-out categories, as harmful prompts (JBB's 100 behaviours).
    goals = {}
    for it in items:
        if it["category"] in HELDOUT_DOMAINS:
            goals.setdefault(it["goal"], it["category"])
    write_jsonl(
        os.path.join(args.out, "jbb_heldout_domains.jsonl"),
        [{"prompt": g, "category": c} for g, c in sorted(goals.items())],
    )

    # XSTest as shipped (CSV); nothing to build. Report what was written.
    counts = defaultdict(int)
    for ex in experts:
        counts[ex["domain"]] += 1
    print(f"experts: {len(experts)} answers in {len(counts)} domains {dict(counts)}")
    print(
        f"erasure: {len(erasure)}  gate: {len(gate)}  stl held-out: {len(heldout)}  jbb held-out goals: {len(goals)}"
    )
    with open(os.path.join(args.shared, "overrefusal/xstest_prompts.csv"), encoding="utf-8") as f:
        print(f"xstest rows: {sum(1 for _ in csv.DictReader(f))}")


if __name__ == "__main__":
    main()
