"""Data of the RASA experiment, built from the public sets in ../shared/data (nothing is copied into
the repository):

* ``refusal_sft.jsonl``: the short SFT that gives the converted SmolLM2 MoE plain refusal behaviour:
  AdvBench behaviours 0–299 → one of eight short refusals (written for this experiment, assigned
  round-robin), plus 150 benign Alpaca-style instructions (refusal_direction ``harmless_val``, first
  150) → the dense SmolLM2-135M-Instruct's own greedy answers (so the SFT does not teach it to refuse
  everything, and distils the dense model's answers back into the converted one).
* ``rasa_requests.jsonl``: AdvBench behaviours 300–419, the harmful requests RASA's stage 0 pairs
  with their jailbreaks (disjoint from the SFT's and from the evaluation's MaliciousInstruct).
* ``calibration.txt``: the text ``routealign moefy`` clusters neurons and fits routers on:
  harmless_val instructions 1000–1399 and Safety-Tuned LLaMAs safe answers 0–199, one per line.

    python experiments/rasa_smollm2_moe/prepare.py --shared ../shared/data --out RUN/data
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I can't help with that request.",
    "Sorry, I won't help with that. It could cause serious harm.",
    "I'm not able to help with this.",
    "I can't assist with that, as it could hurt people.",
    "No, I won't provide that.",
    "I'm sorry, I can't help with requests like this.",
    "That's not something I can help with.",
]


def advbench(shared: Path) -> list[str]:
    with open(
        shared / "harmful_prompts" / "advbench_harmful_behaviors.csv", newline="", encoding="utf-8"
    ) as f:
        rows = list(csv.reader(f))
    return [row[0] for row in (rows[1:] if rows[0][0] == "goal" else rows)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def dense_answers(prompts: list[str]) -> list[str]:
    from routealign.config import ModelConfig
    from routealign.generation import generate
    from routealign.models.loading import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", dtype="float32")
    model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
    return [g.text for g in generate(model, tokenizer, prompts, max_new_tokens=128, batch_size=16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    behaviours = advbench(shared)
    harmless = [
        r["instruction"]
        for r in json.loads(
            (shared / "harmful_prompts" / "refusal_direction" / "harmless_val.json").read_text()
        )
    ]
    if not (out / "refusal_sft.jsonl").is_file():
        refusals = [
            {"prompt": p, "response": REFUSALS[i % len(REFUSALS)], "domain": "refusal"}
            for i, p in enumerate(behaviours[:300])
        ]
        benign = harmless[:150]
        answered = [
            {"prompt": p, "response": a, "domain": "benign"}
            for p, a in zip(benign, dense_answers(benign), strict=True)
            if a
        ]
        write_jsonl(out / "refusal_sft.jsonl", refusals + answered)
    write_jsonl(out / "rasa_requests.jsonl", [{"prompt": p} for p in behaviours[300:420]])
    safe = json.loads((shared / "safe_responses" / "safety_tuned_llamas_safety_only.json").read_text())
    lines = harmless[1000:1400] + [" ".join(r["output"].split()) for r in safe[:200]]
    (out / "calibration.txt").write_text(
        "\n".join(line for line in lines if line.strip()) + "\n", encoding="utf-8"
    )
    print(
        f"{out}: refusal_sft.jsonl, rasa_requests.jsonl ({len(behaviours[300:420])}), calibration.txt ({len(lines)} texts)"
    )


if __name__ == "__main__":
    main()
