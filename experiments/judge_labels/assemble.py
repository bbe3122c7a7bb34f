"""Rebuild the judge's labelled data sets from the label files in this folder and the public data.

The label files hold no prompt text (the prompts are public data that stays in ../shared/data), only
where each prompt came from and a SHA-256 of it; SmolLM2's answers are ours and are stored. This
script finds every prompt again (through the same eval configs and loaders that asked it), checks its
hash, and writes one `labelled` JSONL per set that `routealign judge fit` / `measure.py` read:

    python experiments/judge_labels/assemble.py --shared ../shared/data --out runs/judge-labels

Sets (GUIDE.md, "Split"): fit.jsonl (SmolLM2 answers to the fit prompts), fit-big.jsonl (JailbreakBench
artifacts of Vicuna-13B and GPT-3.5), test-small.jsonl (the SafeMoE experiment's five models),
test-big.jsonl (JailbreakBench artifacts of Llama-2-7b-chat and GPT-4), test2-small.jsonl (SmolLM2
answers to a third group of prompt sources: the second round's test set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
JBB = "unsafe_responses/jailbreakbench_artifacts/attack-artifacts"
SETS = {"fit": "smollm2-fit.jsonl", "fit-big": "jbb-fit.jsonl", "test-small": "experiment-test.jsonl", "test-big": "jbb-test.jsonl",
        "test2-small": "smollm2-test2.jsonl"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def planned_prompts(config: str, shared: str, run_data: str | None = None) -> dict[tuple, str]:
    """(benchmark, item id, attack) → (the plain request, its benchmark label), from an eval config's plan."""
    from routealign.evaluation.runner import load_eval_config, plan_eval

    with open(config, encoding="utf-8") as f:
        text = f.read().replace("../shared/data", shared)
    if run_data:
        text = text.replace("runs/exp-safemoe/data", run_data)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        cfg = load_eval_config(f.name, ["judge=refusal-keywords", "informativeness=false"])
        return {(r["benchmark"], str(r["id"]), r["attack"]): (r["plain_prompt"], r["label"]) for r in plan_eval(cfg).rows}
    finally:
        os.unlink(f.name)


def jbb_items(shared: str) -> dict[str, dict]:
    items = {}
    root = os.path.join(shared, JBB)
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".json") or name in ("attack-info.json", "evaluation.json", "submission.json"):
                continue
            key = os.path.relpath(os.path.join(folder, name), root)[: -len(".json")]
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for item in json.load(f)["jailbreaks"]:
                    items[f"jbb/{key}/{item['index']}"] = item
    return items


def labelled_row(label: dict, prompt: str, response: str, group: str, request: str) -> dict:
    if label["refusal"] not in ("full", "partial", "none") or not isinstance(label["harmful"], bool):
        raise ValueError(f"{label['id']}: refusal must be full/partial/none and harmful a bool")
    return {
        "id": label["id"], "group": group, "request": request, "prompt": prompt, "response": response,
        "refused": label["refusal"] != "none", "refusal": label["refusal"], "harmful": label["harmful"],
    }


def assemble(shared: str, out: str) -> dict[str, int]:
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # The experiment's own prompt files (JBB held-out domains, safety-tuned-llamas held-out).
        subprocess.run([sys.executable, os.path.join(REPO, "experiments/safemoe_smollm2/prepare.py"),
                        "--shared", shared, "--out", tmp], check=True, stdout=subprocess.DEVNULL)
        prompts = planned_prompts(os.path.join(HERE, "fit_answers.yaml"), shared)
        prompts.update(planned_prompts(os.path.join(HERE, "test2_answers.yaml"), shared))
        prompts.update(planned_prompts(os.path.join(REPO, "experiments/safemoe_smollm2/eval.yaml"), shared, tmp))
    jbb = jbb_items(shared)
    counts = {}
    for name, file in SETS.items():
        if not os.path.exists(os.path.join(HERE, file)):
            continue
        rows = []
        for n, label in enumerate(read_jsonl(os.path.join(HERE, file)), start=1):
            where = f"{file}, row {n}"
            if label["id"].startswith("jbb/"):
                item = jbb[label["id"]]
                # The harness's judges see the plain request, so the goal is the prompt here.
                rows.append(labelled_row(label, item["goal"], item["response"], label["id"].split("/")[-2], "harmful"))
                continue
            model, benchmark, attack, item_id = label["id"].split("/", 3)
            prompt, request = prompts.get((benchmark, item_id, attack), (None, None))
            if prompt is None or sha(prompt) != label["prompt_sha256"]:
                raise ValueError(f"{where}: the prompt of {label['id']} is not found in the public data as labelled")
            rows.append(labelled_row(label, prompt, label["response"], model, request))
        with open(os.path.join(out, f"{name}.jsonl.tmp"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.replace(os.path.join(out, f"{name}.jsonl.tmp"), os.path.join(out, f"{name}.jsonl"))
        counts[name] = len(rows)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="runs/judge-labels")
    args = ap.parse_args()
    for name, n in assemble(args.shared, args.out).items():
        print(f"{name}: {n} labelled rows → {os.path.join(args.out, name + '.jsonl')}")


if __name__ == "__main__":
    main()
