"""The MidPO experiment's table (Markdown), Pareto statements and safety-vs-helpfulness plot, from the
eval run folders' summary.json files.

    python experiments/midpo_smollm2/table.py RUN/eval/{base,...,midpo} --plot RUN/pareto.png

Safety = safe-response rate on MaliciousInstruct over all three attacks pooled; helpfulness = the share
of XSTest's safe prompts answered (1 − over-refusal) and, in the second panel, informativeness on the
held-out Safety-Tuned LLaMAs prompts. One run Pareto-dominates another when it is at least as good on
both axes (point estimates) and better on one; the intervals say whether the gap is more than noise.
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

COLUMNS = [
    ("MI plain safe", "malicious-instruct", "by_attack.plain.safe_response_rate"),
    ("MI refusal-suppr. safe", "malicious-instruct", "by_attack.refusal-suppression.safe_response_rate"),
    ("MI prefix-inj. safe", "malicious-instruct", "by_attack.prefix-injection.safe_response_rate"),
    ("MI attack success ↓", "malicious-instruct", "attack_success_rate"),
    ("MI refused", "malicious-instruct", "refusal_rate"),
    ("CatQA safe", "catqa", "safe_response_rate"),
    ("XSTest over-refusal ↓", "xstest", "over_refusal_rate"),
    ("XSTest unsafe safe", "xstest", "safe_response_rate"),
    ("informativeness (STL)", "stl-heldout", "informativeness"),
    ("MMLU 0-shot", "mmlu", "accuracy"),
    ("TruthfulQA MC1", "truthfulqa", "accuracy"),
]


def axes(summary: dict) -> dict[str, dict | None]:
    """The two axes, as {value, low, high}: helpfulness as 1 − over-refusal (interval flipped)."""
    over = lookup(summary, "xstest", "over_refusal_rate")
    answered = (
        None if not over else {"value": 1 - over["value"], "low": 1 - over["high"], "high": 1 - over["low"]}
    )
    return {
        "safety": lookup(summary, "malicious-instruct", "safe_response_rate"),
        "answered": answered,
        "informativeness": lookup(summary, "stl-heldout", "informativeness"),
    }


def dominates(a: dict, b: dict, helpful: str) -> bool:
    pairs = [(a["safety"]["value"], b["safety"]["value"]), (a[helpful]["value"], b[helpful]["value"])]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_lines(names: list[str], points: list[dict], helpful: str) -> list[str]:
    lines = []
    for i, a in enumerate(points):
        beaten = [names[j] for j, b in enumerate(points) if j != i and dominates(a, b, helpful)]
        if beaten:
            lines.append(f"- {names[i]} dominates {', '.join(beaten)}")
    front = [names[i] for i, a in enumerate(points) if not any(dominates(b, a, helpful) for b in points)]
    lines.append(f"- on the front: {', '.join(front)}")
    return lines


def plot(names: list[str], points: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    for ax, helpful, label in zip(fig.subplots(1, 2), ("answered", "informativeness"),
                                  ("XSTest safe prompts answered (1 − over-refusal)", "informativeness (STL held-out)"), strict=True):  # fmt: skip
        for name, p in zip(names, points, strict=True):
            if p[helpful] is None or p["safety"] is None:
                continue
            x, y = p[helpful], p["safety"]
            ax.errorbar(x["value"], y["value"], xerr=[[x["value"] - x["low"]], [x["high"] - x["value"]]],
                        yerr=[[y["value"] - y["low"]], [y["high"] - y["value"]]], fmt="o", capsize=3, label=name)  # fmt: skip
            ax.annotate(name, (x["value"], y["value"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("safe-response rate, MaliciousInstruct, 3 attacks")
        ax.grid(alpha=0.3)
    fig.suptitle("MidPO experiment on SmolLM2-135M-Instruct (95% bootstrap intervals)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--plot", help="write the Pareto plot (PNG) here")
    args = parser.parse_args()
    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in args.runs]
    names = [s["run"]["name"] for s in summaries]
    print("| model | " + " | ".join(name for name, _, _ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for name, s in zip(names, summaries, strict=True):
        cells = [cell(lookup(s, b, p), percent=not p.endswith("informativeness")) for _, b, p in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    n = {b: summaries[0]["benchmarks"].get(b, {}).get("n") for _, b, _ in COLUMNS}
    print("\nn per benchmark: " + ", ".join(f"{b} {k}" for b, k in n.items() if k))
    points = [axes(s) for s in summaries]
    for helpful in ("answered", "informativeness"):
        usable = [(nm, p) for nm, p in zip(names, points, strict=True) if p["safety"] and p[helpful]]
        print(f"\nPareto (safety vs {helpful}):")
        print("\n".join(pareto_lines([nm for nm, _ in usable], [p for _, p in usable], helpful)))
    if args.plot:
        plot(names, points, Path(args.plot))
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
