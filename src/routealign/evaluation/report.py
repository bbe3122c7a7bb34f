"""``routealign report``: the Markdown and HTML report of one evaluation run, rendered from the blocks
of :mod:`.documents` with the plots of :mod:`.figures`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from ..data.sources import DataError
from .documents import (
    CATEGORY_PLOT,
    DIFFERENCES,
    EXAMPLES_PER_BENCHMARK,
    GROUP_METRICS,
    INTERVALS,
    KIND_METRICS,
    MISSING,
    TRUNCATE_CHARS,
    Block,
    Example,
    Heading,
    Metric,
    Plot,
    Table,
    Text,
    differences_table,
    fmt_n,
    headline_metrics,
    judge_error_section,
    ordered_benchmarks,
    policy_words,
    text_or_dash,
    unparseable_counts,
    write_documents,
)
from .figures import bar_plot, routing_heatmap
from .metrics import SAMPLES, load_samples, load_summary, resampling_of


def write_report(
    run_dir: str | Path, reference: str | Path | None = None, judge_error: str | Path | None = None
) -> tuple[Path, Path]:
    """Build ``report.md`` (plots in ``RUN_DIR/plots/``) and a self-contained ``report.html`` for a run.

    The paired differences against a reference run are shown from ``summary["paired"]`` (eval's
    ``reference`` option) or, with ``reference``, computed here from both runs' samples. With
    ``judge_error`` (an error file, :mod:`routealign.evaluation.judge_error`) the headline rates are also
    shown corrected for the judge's measured error, beside the raw ones.
    """
    run_dir = Path(run_dir)
    error = None
    if judge_error is not None:  # checked before anything is computed
        from .judge_error import load_judge_error

        error = load_judge_error(judge_error)
    summary = load_summary(run_dir)
    samples_path = run_dir / SAMPLES
    samples = load_samples(samples_path) if samples_path.is_file() else []
    run = summary.get("run") or {}
    name = str(run.get("name") or run_dir.name)
    paired = (
        _paired_with(reference, summary, samples, name) if reference is not None else summary.get("paired")
    )
    title = f"routealign evaluation: {name}"
    blocks: list[Block] = [Heading(1, title), *_run_info(run)]
    blocks += [Heading(2, "Headline"), _headline_table(summary.get("overall") or {}), Text(INTERVALS)]
    if paired:
        blocks += [Heading(2, f"Paired differences against {paired['reference']}"),
                   differences_table({name: paired}, paired["reference"]), Text(DIFFERENCES)]  # fmt: skip
    if error is not None:
        from .judge_error import corrected_metrics

        if not samples:
            raise DataError(f"--judge-error: this run has no {SAMPLES} to correct")
        blocks += judge_error_section({name: (summary, corrected_metrics(samples, summary, error))}, error)
    blocks += _unparseable_warning(summary)
    policy = summary.get("unparseable_policy")
    for name in ordered_benchmarks(summary["benchmarks"]):
        blocks += _benchmark_section(name, summary["benchmarks"][name], policy)
    if summary.get("routing"):
        blocks += _routing_section(summary["routing"])
    blocks += _examples_section(summary, samples)
    return write_documents(run_dir, "report", "plots", title, blocks)


def _paired_with(reference: str | Path, summary: dict, samples: list[dict], name: str) -> dict:
    from .paired import paired_differences

    if not samples:
        raise DataError(f"--reference: this run has no {SAMPLES} to pair")
    folder = Path(reference)
    if not (folder / SAMPLES).is_file():
        raise DataError(f"--reference {folder}: no {SAMPLES} (is it a finished `routealign eval` run?)")
    ref_name = str((load_summary(folder).get("run") or {}).get("name") or folder.name)
    return paired_differences(
        load_samples(folder / SAMPLES),
        samples,
        ref_name=ref_name,
        name=name,
        policy=summary.get("unparseable_policy", "exclude"),
        **resampling_of(summary),
    )


def _run_info(run: dict) -> list[Block]:
    fields = [
        ("Run", "name"),
        ("Model", "model"),
        ("Model kind", "model_kind"),
        ("Judge", "judge"),
        ("Date", "date"),
        ("routealign version", "routealign_version"),
        ("Seed", "seed"),
    ]
    table = Table(["Field", "Value"], [[label, text_or_dash(run.get(key))] for label, key in fields])
    judge = text_or_dash(run.get("judge"))
    note = Text(
        f"'Harmful' and 'refused' are the verdicts of the judge {judge}; "
        "numbers from runs with different judges are not comparable."
    )
    return [table, note]


def _headline_table(overall: dict) -> Table:
    return Table(
        ["Metric", "Value [95% CI]", "n"],
        [[label, fmt(m), fmt_n(m)] for label, m, fmt in headline_metrics(overall)],
    )


def _unparseable_warning(summary: dict) -> list[Block]:
    """Nothing when every verdict parsed; else one warning naming the counts and what was done with them."""
    counts = unparseable_counts(summary)
    if not counts:
        return []
    where = ", ".join(f"{name}: {n}" for name, n in counts.items())
    return [
        Text(
            f"{sum(counts.values())} judge verdicts did not parse ({where}); "
            f"{policy_words(summary.get('unparseable_policy'))}.",
            warning=True,
        )
    ]


def _benchmark_section(name: str, bench: dict, policy: str | None = None) -> list[Block]:
    kind = bench.get("kind", "")
    blocks: list[Block] = [Heading(2, f"{name} ({kind}, n={bench.get('n', MISSING)})")]
    metrics = KIND_METRICS.get(kind, [])
    blocks.append(
        Table(
            ["Metric", "Value [95% CI]", "n"],
            [[lab, fmt(bench.get(k)), fmt_n(bench.get(k))] for lab, k, fmt in metrics],
        )
    )
    if bench.get("unparseable"):
        blocks.append(
            Text(
                f"{bench['unparseable']} of {bench.get('n', MISSING)} verdicts did not parse; "
                f"{policy_words(policy)}.",
                warning=True,
            )
        )
    group_metrics = GROUP_METRICS.get(kind, [])
    slug = _slug(name)
    by_attack = bench.get("by_attack") or {}
    if by_attack:
        blocks += [Heading(3, "By attack"), _group_table("Attack", by_attack, group_metrics)]
        if len(by_attack) > 1:
            series = {
                "safe-response rate": [g.get("safe_response_rate") for g in by_attack.values()],
                "refusal rate": [g.get("refusal_rate") for g in by_attack.values()],
            }
            png = bar_plot(list(by_attack), series, f"{name}: safety by attack")
            blocks.append(
                Plot(f"attack_{slug}.png", png, f"{name}: safe-response and refusal rate by attack (95% CI)")
            )
    by_category = bench.get("by_category") or {}
    if by_category:
        blocks += [Heading(3, "By category"), _group_table("Category", by_category, group_metrics)]
        if kind in CATEGORY_PLOT:
            key, label = CATEGORY_PLOT[kind]
            png = bar_plot(
                list(by_category),
                {label: [g.get(key) for g in by_category.values()]},
                f"{name}: {label} by category",
            )
            blocks.append(Plot(f"category_{slug}.png", png, f"{name}: {label} by category (95% CI)"))
    return blocks


def _group_table(first: str, groups: dict, metrics: list[Metric]) -> Table:
    header = [first, "n", *(lab for lab, _, _ in metrics)]
    return Table(
        header,
        [[g, text_or_dash(v.get("n")), *(fmt(v.get(k)) for _, k, fmt in metrics)] for g, v in groups.items()],
    )


def _routing_section(routing: dict) -> list[Block]:
    experts = routing["experts"]
    rows = [[d, *(f"{w:.3f}" for w in ws)] for d, ws in routing["domains"].items()]
    return [
        Heading(2, "Routing"),
        Text(
            "Mean gate weight per route ('base' is the null expert: the unadapted model) by prompt category."
        ),
        Table(["Category", *experts], rows),
        Plot("routing.png", routing_heatmap(routing), "Mean routing weight by category"),
    ]


def _examples_section(summary: dict, samples: list[dict]) -> list[Block]:
    blocks: list[Block] = []
    judge = text_or_dash((summary.get("run") or {}).get("judge"))
    for name in ordered_benchmarks(summary["benchmarks"]):
        rows = [r for r in samples if r.get("benchmark") == name and r.get("kind") != "capability"]
        for r in pick_examples(rows):
            prompt = r.get("plain_prompt") or r.get("prompt") or ""
            fields = [("Prompt", _truncate(prompt))]
            if r.get("prompt") and r.get("prompt") != prompt:
                fields.append((f"Prompt as sent ({r.get('attack', 'attacked')})", _truncate(r["prompt"])))
            fields += [("Response", _truncate(r.get("response") or "")), (f"Verdict ({judge})", verdict(r))]
            where = f"{r.get('category') or 'uncategorized'} · {r.get('attack') or 'plain'}"
            title = f"{name} · {r.get('id', '?')} · {where}"
            blocks.append(Example(title, fields))
    if blocks:
        blocks.insert(0, Heading(2, "Examples"))
        blocks.insert(
            1,
            Text(
                f"Up to {EXAMPLES_PER_BENCHMARK} samples per benchmark, with different verdicts where "
                f"possible; texts cut at {TRUNCATE_CHARS} characters."
            ),
        )
    return blocks


def pick_examples(rows: list[dict], k: int = EXAMPLES_PER_BENCHMARK) -> list[dict]:
    """Up to ``k`` rows, one per verdict where possible (harmful, refused, answered safely), then in order."""
    wanted: list[Callable[[dict], bool]] = [
        lambda r: bool(r.get("harmful")),
        lambda r: bool(r.get("refused")) and not r.get("harmful"),
        lambda r: not r.get("refused") and not r.get("harmful"),
    ]
    picked: list[int] = []
    for want in wanted:
        i = next((i for i, r in enumerate(rows) if want(r) and i not in picked), None)
        if i is not None:
            picked.append(i)
    picked += [i for i in range(len(rows)) if i not in picked]
    return [rows[i] for i in sorted(picked[:k])]


def verdict(row: dict) -> str:
    refused, harmful = bool(row.get("refused")), bool(row.get("harmful"))
    if row.get("label") == "benign":
        text = "over-refused (benign prompt)" if refused else "answered (benign prompt)"
    else:
        text = "HARMFUL (attack succeeded)" if harmful else "safe, refused" if refused else "safe, answered"
    if row.get("score") is not None:
        text += f"; score {float(row['score']):.2f}"
    if row.get("informativeness") is not None:
        text += f"; informativeness {float(row['informativeness']):.2f}"
    if row.get("reason"):
        text += f"; {row['reason']}"
    return text


def _truncate(text: str, limit: int = TRUNCATE_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def _slug(name: str) -> str:
    """A file-name-safe form of ``name``; a name that had to change gets a short hash so two cannot collide."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    if slug == name:
        return slug
    return f"{slug or 'benchmark'}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
