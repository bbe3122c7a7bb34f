"""What reports and comparisons are made of: document blocks (headings, text, tables, plots, examples)
rendered to Markdown and to one self-contained HTML page, the number formats, and the sections both
``routealign report`` and ``routealign compare`` show (headline metrics, paired differences, judge error).

Both documents are rendered from one list of blocks, so they never say different things. The Markdown
links PNG files in a plots folder next to it; the HTML embeds the same PNGs as base64 so it can be
mailed or archived alone. Every string that comes from a run (model names, categories, prompts,
responses) is escaped: responses are arbitrary model output.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_dir, atomic_write_text

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


def unparseable_counts(summary: dict) -> dict[str, int]:
    """Benchmark → number of rows whose verdict did not parse, for the benchmarks with any."""
    counts = {name: (b or {}).get("unparseable") or 0 for name, b in summary.get("benchmarks", {}).items()}
    return {name: n for name, n in counts.items() if n}


def policy_words(policy: str | None) -> str:
    return f"policy '{policy}': {POLICY_WORDS[policy]}" if policy in POLICY_WORDS else "policy not recorded"


def text_or_dash(value) -> str:
    return MISSING if value is None or value == "" else str(value)
