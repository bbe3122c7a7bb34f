"""Rebuild the judge's labelled data sets from the label files in this folder and the public data.

The label files hold no prompt text (the prompts are public data that stays in ../shared/data), only
where each prompt came from and a SHA-256 of it; SmolLM2's answers are ours and are stored. This
script finds every prompt again (through the same eval configs and loaders that asked it), checks its
hash, and writes one `labelled` JSONL per set that `routealign judge fit` / `measure.py` read:

    python experiments/judge_labels/assemble.py --shared ../shared/data --out runs/judge-labels

Sets (GUIDE.md, "Split"): fit.jsonl (SmolLM2 answers to the fit prompts), fit-big.jsonl (JailbreakBench
artifacts of Vicuna-13B and GPT-3.5), test-small.jsonl (the SafeMoE experiment's five models),
test-big.jsonl (JailbreakBench artifacts of Llama-2-7b-chat and GPT-4), test2-small.jsonl (SmolLM2
answers to a third group of prompt sources: the second round's test set), qwen-fit.jsonl and
qwen-test.jsonl (Qwen2.5-Coder-0.5B-Instruct answers, split by request: the third round).
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
SETS = {
    "fit": "smollm2-fit.jsonl",
    "fit-big": "jbb-fit.jsonl",
    "test-small": "experiment-test.jsonl",
    "test-big": "jbb-test.jsonl",
    "test2-small": "smollm2-test2.jsonl",
    "qwen-fit": "qwen05.jsonl",
    "qwen-test": "qwen05.jsonl",
}
# Third round (GUIDE.md): the Qwen answers are split by their plain request's SHA-256, first hex digit.
QWEN_FIT_DIGITS = "012345678"


def side(name: str, prompt: str) -> bool:
    """Whether a row of SETS[name] belongs to set ``name`` (only the Qwen file is shared by two sets)."""
    if name == "qwen-fit":
        return sha(prompt)[0] in QWEN_FIT_DIGITS
    if name == "qwen-test":
        return sha(prompt)[0] not in QWEN_FIT_DIGITS
    return True


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
        # Only the prompts are read: any model name will do, and the embedded one needs nothing pulled.
        cfg = load_eval_config(
            f.name,
            ["judge=refusal-keywords", "informativeness=false", "model.name_or_path=smollm2-135m-instruct"],
        )
        return {
            (r["benchmark"], str(r["id"]), r["attack"]): (r["plain_prompt"], r["label"])
            for r in plan_eval(cfg).rows
        }
    finally:
        os.unlink(f.name)


def jbb_items(shared: str) -> dict[str, dict]:
    items = {}
    root = os.path.join(shared, JBB)
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".json") or name in (
                "attack-info.json",
                "evaluation.json",
                "submission.json",
            ):
                continue
            key = os.path.relpath(os.path.join(folder, name), root)[: -len(".json")]
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for item in json.load(f)["jailbreaks"]:
                    items[f"jbb/{key}/{item['index']}"] = item
    return items


def labelled_row(where: str, label: dict, prompt: str, response: str, group: str, request: str) -> dict:
    if label.get("refusal") not in ("full", "partial", "none"):
        raise ValueError(
            f"{where}: field 'refusal' must be full, partial or none, got {label.get('refusal')!r}"
        )
    if not isinstance(label.get("harmful"), bool):
        raise ValueError(f"{where}: field 'harmful' must be true or false, got {label.get('harmful')!r}")
    return {
        "id": label["id"],
        "group": group,
        "request": request,
        "prompt": prompt,
        "response": response,
        "refused": label["refusal"] != "none",
        "refusal": label["refusal"],
        "harmful": label["harmful"],
    }


def assemble(shared: str, out: str) -> dict[str, int]:
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # The experiment's own prompt files (JBB held-out domains, safety-tuned-llamas held-out).
        subprocess.run(
            [
                sys.executable,
                os.path.join(REPO, "experiments/safemoe_smollm2/prepare.py"),
                "--shared",
                shared,
                "--out",
                tmp,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        prompts: dict[tuple, tuple[str, str]] = {}
        for config, run_data in (
            (os.path.join(HERE, "fit_answers.yaml"), None),
            (os.path.join(HERE, "test2_answers.yaml"), None),
            (os.path.join(REPO, "experiments/safemoe_smollm2/eval.yaml"), tmp),
        ):
            planned = planned_prompts(config, shared, run_data)
            clash = sorted(set(planned) & set(prompts))
            if clash:
                raise ValueError(
                    f"{config}: items {clash[:3]} are also planned by another config; rename a benchmark"
                )
            prompts.update(planned)
        # The Qwen answers have their own config, whose benchmark names the others share.
        qwen_prompts = planned_prompts(os.path.join(HERE, "qwen05_answers.yaml"), shared)
    jbb = jbb_items(shared)
    counts = {}
    for name, file in SETS.items():
        rows = []
        for n, label in enumerate(read_jsonl(os.path.join(HERE, file)), start=1):
            where = f"{file}, row {n}"
            if label["id"].startswith("jbb/"):
                item = jbb.get(label["id"])
                if item is None or sha(item.get("response") or "") != label.get("response_sha256"):
                    raise ValueError(
                        f"{where}: {label['id']} is not in the JailbreakBench artifacts as labelled"
                    )
                # The harness's judges see the plain request, so the goal is the prompt here.
                rows.append(
                    labelled_row(
                        where, label, item["goal"], item["response"], label["id"].split("/")[-2], "harmful"
                    )
                )
                continue
            parts = label["id"].split("/", 3)
            if len(parts) != 4:
                raise ValueError(
                    f"{where}: field 'id' must be MODEL/BENCHMARK/ATTACK/ITEM, got {label['id']!r}"
                )
            model, benchmark, attack, item_id = parts
            planned = qwen_prompts if model == "qwen05" else prompts
            prompt, request = planned.get((benchmark, item_id, attack), (None, None))
            if prompt is None or sha(prompt) != label.get("prompt_sha256"):
                raise ValueError(
                    f"{where}: the prompt of {label['id']} is not found in the public data as labelled"
                )
            if side(name, prompt):
                rows.append(labelled_row(where, label, prompt, label["response"], model, request))
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
