"""Readable reports from evaluation runs: one run (``routealign report``) or several side by side
(``routealign compare``), each as Markdown plus a self-contained HTML page.

Both documents are rendered from one list of blocks (headings, tables, plots, examples), so they never
say different things. The Markdown links PNG files in a plots folder next to it; the HTML embeds the
same PNGs as base64 so it can be mailed or archived alone. Every string that comes from a run (model
names, categories, prompts, responses) is escaped: responses are arbitrary model output.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.sources import DataError
from ..io import atomic_dir, atomic_write_text
from ..plots import new_figure, to_png
from .metrics import SAMPLES, load_samples, load_summary, resampling_of

EXAMPLES_PER_BENCHMARK = 3
TRUNCATE_CHARS = 600
MISSING = "—"
INTERVALS = (
    "Rates carry 95% Wilson score intervals at the effective number of prompts (one prompt's answers under "
    "every attack count together; a rate of 0% or 100% keeps its width); informativeness carries a 95% "
    "bootstrap interval resampled by prompt; n counts the samples each is taken over."
)
DIFFERENCES = (
    "Paired differences, run − reference on the same items: percentage points for rates (score points for "
    "informativeness), with a 95% interval (rates: MOVER-Wilson over prompt clusters; means: paired "
    "bootstrap) and the shares of paired bootstrap resamples above and below zero (the rest tie). * marks an "
    "interval that excludes 0."
)
POLICY_WORDS = {
    "exclude": "left out of the rates",
    "safe": "counted as not harmful and not refused",
    "harmful": "counted as harmful and not refused",
}
"""What each ``unparseable`` policy of ``metrics.summarize`` did with the rows whose verdict did not parse."""


# --------------------------------------------------------------------------------------------------
# Document blocks, rendered to Markdown and HTML


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str
    warning: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Plot:
    name: str
    """File name inside the plots folder."""
    png: bytes
    caption: str


@dataclass
class Example:
    title: str
    fields: list[tuple[str, str]]
    """(label, text) pairs; the text is shown verbatim (preformatted, escaped)."""


Block = Heading | Text | Table | Plot | Example


def render_markdown(blocks: Sequence[Block], plots_dir: str) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {_md_inline(b.text)}")
        elif isinstance(b, Text):
            out.append(f"> **Warning:** {_md_inline(b.text)}" if b.warning else _md_inline(b.text))
        elif isinstance(b, Table):
            lines = [_md_row(b.header), "|" + "---|" * len(b.header)]
            out.append("\n".join(lines + [_md_row(r) for r in b.rows]))
        elif isinstance(b, Plot):
            out.append(f"![{_md_inline(b.caption)}]({plots_dir}/{b.name})")
        elif isinstance(b, Example):
            parts = [f"**{_md_inline(b.title)}**"]
            for label, text in b.fields:
                parts.append(f"*{_md_inline(label)}*\n\n{_md_fence(text)}")
            out.append("\n\n".join(parts))
    return "\n\n".join(out) + "\n"


def render_html(title: str, blocks: Sequence[Block]) -> str:
    e = html.escape
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            body.append(
                f'<p class="warning"><strong>Warning:</strong> {e(b.text)}</p>'
                if b.warning
                else f"<p>{e(b.text)}</p>"
            )
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>\n" for r in b.rows)
            body.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>")
        elif isinstance(b, Plot):
            data = base64.b64encode(b.png).decode("ascii")
            body.append(
                f'<figure><img alt="{e(b.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Example):
            fields = "".join(f"<dt>{e(label)}</dt><dd><pre>{e(text)}</pre></dd>" for label, text in b.fields)
            body.append(f'<div class="example"><h4>{e(b.title)}</h4><dl>{fields}</dl></div>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em; }
figure { margin: 1em 0; } img { max-width: 100%; }
.example { border: 1px solid #ddd; padding: 0.5em 1em; margin: 1em 0; }
pre { white-space: pre-wrap; word-break: break-word; background: #f8f8f8; padding: 0.5em; }
"""


def _md_inline(text: str) -> str:
    # Raw HTML in Markdown is live in most renderers; entities still display as the characters.
    return html.escape(" ".join(str(text).split()), quote=False)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_md_inline(c).replace("|", "\\|") for c in cells) + " |"


def _md_fence(text: str) -> str:
    """A fenced block longer than any backtick run in ``text``, so the text cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def write_documents(
    out_dir: Path, stem: str, plots_dir: str, title: str, blocks: list[Block]
) -> tuple[Path, Path]:
    # The plots folder is replaced whole, so no stale plot from an earlier report survives next to it.
    with atomic_dir(out_dir / plots_dir) as tmp:
        for b in blocks:
            if isinstance(b, Plot):
                (tmp / b.name).write_bytes(b.png)
    md_path, html_path = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
    atomic_write_text(md_path, render_markdown(blocks, plots_dir))
    atomic_write_text(html_path, render_html(title, blocks))
    return md_path, html_path


# --------------------------------------------------------------------------------------------------
# Formatting numbers


def fmt_pct(m: dict | None) -> str:
    """``"87.5% [75.0, 100.0]"``; ``"—"`` for a missing metric."""
    if not m or m.get("value") is None:
        return MISSING
    return f"{100 * m['value']:.1f}% [{100 * m['low']:.1f}, {100 * m['high']:.1f}]"


def fmt_num(m: dict | None) -> str:
    """Informativeness is a mean score on the judge's own scale, so it is not shown as a percentage."""
    if not m or m.get("value") is None:
        return MISSING
    return f"{m['value']:.2f} [{m['low']:.2f}, {m['high']:.2f}]"


def fmt_n(m: dict | None) -> str:
    return MISSING if not m or m.get("value") is None else str(m["n"])


def with_n(fmt: Callable[[dict | None], str], m: dict | None) -> str:
    text = fmt(m)
    return text if text == MISSING else f"{text} (n={m['n']})"


Metric = tuple[str, str, Callable[[dict | None], str]]
"""(label, summary key, formatter)."""

KIND_METRICS: dict[str, list[Metric]] = {
    "harmful": [
        ("Safe-response rate", "safe_response_rate", fmt_pct),
        ("Attack success rate", "attack_success_rate", fmt_pct),
        ("Refusal rate", "refusal_rate", fmt_pct),
        ("Informativeness", "informativeness", fmt_num),
    ],
    "overrefusal": [
        ("Over-refusal rate (benign prompts)", "over_refusal_rate", fmt_pct),
        ("Safe-response rate (harmful contrasts)", "safe_response_rate", fmt_pct),
        ("Informativeness", "informativeness", fmt_num),
    ],
    "capability": [("Accuracy", "accuracy", fmt_pct)],
}
GROUP_METRICS: dict[str, list[Metric]] = {
    "harmful": KIND_METRICS["harmful"][:3],
    "overrefusal": KIND_METRICS["overrefusal"][:2],
    "capability": KIND_METRICS["capability"],
}


CATEGORY_PLOT = {
    "harmful": ("safe_response_rate", "safe-response rate"),
    "overrefusal": ("over_refusal_rate", "over-refusal rate"),
    "capability": ("accuracy", "accuracy"),
}
"""The metric each benchmark kind plots by category: (summary key, label)."""


def ordered_benchmarks(benchmarks: dict) -> list[str]:
    """Benchmark names, harmful first, then over-refusal, then capability (stable within a kind)."""
    order = {kind: i for i, kind in enumerate(KIND_METRICS)}
    return sorted(benchmarks, key=lambda b: order.get((benchmarks[b] or {}).get("kind"), len(order)))


def headline_metrics(overall: dict) -> list[tuple[str, dict | None, Callable]]:
    """The headline rows of a summary's ``overall``: safety, over-refusal, informativeness, capability."""
    rows = [
        ("Safe-response rate (harmful benchmarks)", overall.get("safe_response_rate"), fmt_pct),
        ("Attack success rate", overall.get("attack_success_rate"), fmt_pct),
        ("Over-refusal rate (benign prompts)", overall.get("over_refusal_rate"), fmt_pct),
        ("Informativeness (answered prompts)", overall.get("informativeness"), fmt_num),
    ]
    return rows + [(f"Accuracy: {b}", m, fmt_pct) for b, m in (overall.get("capability") or {}).items()]


def fmt_diff(d: dict | None, *, percent: bool = True) -> str:
    """``"+30.0 [+12.1, +45.3] (99% above 0, 0% below) *"``: the difference, its interval, and the shares of
    paired resamples above and below zero (the rest tie); * where the interval excludes 0."""
    if not d or d.get("value") is None:
        return MISSING
    scale, digits = (100, 1) if percent else (1, 2)
    mark = " *" if d["low"] > 0 or d["high"] < 0 else ""
    return (f"{scale * d['value']:+.{digits}f} [{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}] "
            f"({100 * d['above_zero']:.0f}% above 0, {100 * d['below_zero']:.0f}% below){mark}")  # fmt: skip


HEADLINE_DIFFERENCES = [
    ("Safe-response rate (harmful benchmarks)", "safe_response_rate", True),
    ("Attack success rate", "attack_success_rate", True),
    ("Over-refusal rate (benign prompts)", "over_refusal_rate", True),
    ("Informativeness (answered prompts)", "informativeness", False),
]


def judge_error_section(runs: dict[str, tuple[dict, dict]], error: dict) -> list[Block]:
    """Headline rates as judged and corrected for the judge's error: run label → (summary, corrected rates)."""
    from .judge_error import CORRECTED, sensitivity_specificity

    names = {key: label for label, key, _ in HEADLINE_DIFFERENCES}
    rows = []
    for metric in CORRECTED:
        if not any(metric in corrected for _, corrected in runs.values()):
            continue
        for run, (summary, corrected) in runs.items():
            m = corrected.get(metric) or {}
            cell = (
                f"not corrected: {m['outside']} measured on {error['label_set']}"
                if m.get("outside")
                else fmt_pct(m)
            )
            rows.append([names[metric], run, fmt_pct((summary.get("overall") or {}).get(metric)), cell])
    measured = []
    for question in ("harmful", "refused"):
        if question in error:
            c = error[question]
            se, sp = sensitivity_specificity(c)
            measured.append(f"{question}? sensitivity {se:.3f}, specificity {sp:.3f} "
                            f"(tp {c['tp']}, fn {c['fn']}, tn {c['tn']}, fp {c['fp']})")  # fmt: skip
    return [
        Heading(2, f"Corrected for the judge's error (label set {error['label_set']})"),
        Table(["Metric", "Run", "As judged [95% CI]", f"Corrected, {error['label_set']} [95% CI]"], rows),
        Text(f"Rogan–Gladen correction with the judge {error['judge']}'s error measured on the label set "
             f"{error['label_set']} ({error['path']}): {'; '.join(measured)}. The corrected interval carries both "
             "the prompts' and the label set's uncertainty. It holds only as far as the label set's answers are "
             "like these."),
    ]  # fmt: skip


def differences_table(differences: dict[str, dict], reference: str) -> Table:
    """The headline metrics' paired differences (``paired.paired_differences`` per run) against ``reference``."""
    runs = list(differences)
    rows = [[label, *(fmt_diff(differences[r]["overall"].get(key), percent=pct) for r in runs)]
            for label, key, pct in HEADLINE_DIFFERENCES]  # fmt: skip
    capability: list[str] = []
    for r in runs:
        capability += [b for b in differences[r]["overall"]["capability"] if b not in capability]
    rows += [[f"Accuracy: {b}", *(fmt_diff(differences[r]["overall"]["capability"].get(b)) for r in runs)]
             for b in capability]  # fmt: skip
    return Table(["Metric", *(f"{r} − {reference}" for r in runs)], rows)


# --------------------------------------------------------------------------------------------------
# Plots (on the bare-Figure helpers of routealign.plots)


def error_bar(m: dict | None, scale: float) -> tuple[float, float, float]:
    """(value, minus, plus) for an error bar; zeros for a missing metric."""
    if not m or m.get("value") is None:
        return 0.0, 0.0, 0.0
    v = m["value"] * scale
    return v, max(0.0, v - m["low"] * scale), max(0.0, m["high"] * scale - v)


def bar_plot(labels: Sequence[str], series: dict[str, Sequence[dict | None]], title: str) -> bytes:
    """Bars of rates (in %) per label, one bar per series, with their bootstrap intervals as error bars."""
    import numpy as np

    fig = new_figure(min(16, max(4.5, 0.5 * len(labels) * len(series) + 2)), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for k, (name, ms) in enumerate(series.items()):
        v, minus, plus = zip(*(error_bar(m, 100) for m in ms), strict=True) if ms else ((), (), ())
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar(x + offset, v, width, yerr=[minus, plus], capsize=3, label=name)
    ax.set_xticks(
        x,
        [str(lab) for lab in labels],
        rotation=30 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(loc="lower right", fontsize="small")
    return to_png(fig)


def routing_heatmap(routing: dict, title: str = "Mean routing weight by category") -> bytes:
    """Categories × routes, cells annotated with the mean gate weight."""
    import numpy as np

    experts, domains = routing["experts"], routing["domains"]
    matrix = np.array([domains[d] for d in domains], dtype=float).reshape(len(domains), len(experts))
    fig = new_figure(max(4.5, 0.9 * len(experts) + 3), max(2.5, 0.45 * len(domains) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(
        matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1.0, float(matrix.max(initial=0)))
    )
    ax.set_xticks(range(len(experts)), experts, rotation=30 if len(experts) > 4 else 0)
    ax.set_yticks(range(len(domains)), list(domains))
    if matrix.size <= 300:
        for (i, j), w in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                f"{w:.2f}",
                ha="center",
                va="center",
                fontsize="small",
                color="white" if w < 0.5 else "black",
            )
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    return to_png(fig)


# --------------------------------------------------------------------------------------------------
# One run


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


def unparseable_counts(summary: dict) -> dict[str, int]:
    """Benchmark → number of rows whose verdict did not parse, for the benchmarks with any."""
    counts = {name: (b or {}).get("unparseable") or 0 for name, b in summary.get("benchmarks", {}).items()}
    return {name: n for name, n in counts.items() if n}


def policy_words(policy: str | None) -> str:
    return f"policy '{policy}': {POLICY_WORDS[policy]}" if policy in POLICY_WORDS else "policy not recorded"


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


def text_or_dash(value) -> str:
    return MISSING if value is None or value == "" else str(value)


# --------------------------------------------------------------------------------------------------
# Command line (wired into the ``routealign`` command table in cli.py)


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", type=Path, help="a finished `routealign eval` run folder (holds summary.json)"
    )
    parser.add_argument(
        "--reference", type=Path, metavar="RUN_DIR",
        help="show this run's paired differences against another run of the same items",
    )  # fmt: skip
    add_judge_error_arg(parser)


def add_judge_error_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--judge-error", metavar="FILE",
        help="also show the headline rates corrected for the judge's error measured on a label set (a JSON "
             "of confusion counts, e.g. routealign://judges/mpnet/error-qwen-test.json); off by default",
    )  # fmt: skip


def cmd_report(args: argparse.Namespace) -> int:
    md_path, html_path = write_report(
        args.run_dir, reference=args.reference, judge_error=args.judge_error
    )  # a bad run folder: ValueError, one line from the CLI
    print(f"report written to {md_path} and {html_path}")
    return 0
