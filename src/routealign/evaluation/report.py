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
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..io import atomic_dir, atomic_write_text, locked_by, refuse_foreign
from .metrics import SAMPLES, is_eval_folder, load_samples, load_summary

EXAMPLES_PER_BENCHMARK = 3
TRUNCATE_CHARS = 600
MISSING = "—"
INTERVALS = (
    "Values are means with 95% bootstrap intervals resampled by prompt (clustered over attacks: one "
    "prompt's answers under every attack are drawn together); n counts the samples each is taken over."
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


def _write_documents(
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


def _with_n(fmt: Callable[[dict | None], str], m: dict | None) -> str:
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


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas on a bare Figure: no pyplot, so no global figure state or GUI backend)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _interval(m: dict | None, scale: float) -> tuple[float, float, float]:
    """(value, minus, plus) for an error bar; zeros for a missing metric."""
    if not m or m.get("value") is None:
        return 0.0, 0.0, 0.0
    v = m["value"] * scale
    return v, max(0.0, v - m["low"] * scale), max(0.0, m["high"] * scale - v)


def bar_plot(labels: Sequence[str], series: dict[str, Sequence[dict | None]], title: str) -> bytes:
    """Bars of rates (in %) per label, one bar per series, with their bootstrap intervals as error bars."""
    import numpy as np

    fig = _figure(min(16, max(4.5, 0.5 * len(labels) * len(series) + 2)), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for k, (name, ms) in enumerate(series.items()):
        v, minus, plus = zip(*(_interval(m, 100) for m in ms), strict=True) if ms else ((), (), ())
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
    return _png(fig)


def routing_heatmap(routing: dict, title: str = "Mean routing weight by category") -> bytes:
    """Categories × routes, cells annotated with the mean gate weight."""
    import numpy as np

    experts, domains = routing["experts"], routing["domains"]
    matrix = np.array([domains[d] for d in domains], dtype=float).reshape(len(domains), len(experts))
    fig = _figure(max(4.5, 0.9 * len(experts) + 3), max(2.5, 0.45 * len(domains) + 1.5))
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
    return _png(fig)


def safety_scatter(points: Sequence[tuple[str, dict, dict]]) -> bytes:
    """One labelled point per run: x = over-refusal rate, y = safe-response rate (%), CIs both ways."""
    fig = _figure(6, 4.5)
    ax = fig.add_subplot()
    for label, over, safe in points:
        x, x_minus, x_plus = _interval(over, 100)
        y, y_minus, y_plus = _interval(safe, 100)
        ax.errorbar([x], [y], xerr=[[x_minus], [x_plus]], yerr=[[y_minus], [y_plus]], fmt="o", capsize=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("over-refusal rate on benign prompts (%), lower is better")
    ax.set_ylabel("safe-response rate on harmful prompts (%), higher is better")
    ax.set_title("Safety vs over-refusal")
    ax.grid(alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------------------------------
# One run


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Build ``report.md`` (plots in ``RUN_DIR/plots/``) and a self-contained ``report.html`` for a run."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    samples_path = run_dir / SAMPLES
    samples = load_samples(samples_path) if samples_path.is_file() else []
    run = summary.get("run") or {}
    title = f"routealign evaluation: {run.get('name') or run_dir.name}"
    blocks: list[Block] = [Heading(1, title), *_run_info(run)]
    blocks += [Heading(2, "Headline"), _headline_table(summary.get("overall") or {}), Text(INTERVALS)]
    blocks += _unparseable_warning(summary)
    policy = summary.get("unparseable_policy")
    for name in ordered_benchmarks(summary["benchmarks"]):
        blocks += _benchmark_section(name, summary["benchmarks"][name], policy)
    if summary.get("routing"):
        blocks += _routing_section(summary["routing"])
    blocks += _examples_section(summary, samples)
    return _write_documents(run_dir, "report", "plots", title, blocks)


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
    table = Table(["Field", "Value"], [[label, _str(run.get(key))] for label, key in fields])
    judge = _str(run.get("judge"))
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


def _policy_words(policy: str | None) -> str:
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
            f"{_policy_words(summary.get('unparseable_policy'))}.",
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
                f"{_policy_words(policy)}.",
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
        header, [[g, _str(v.get("n")), *(fmt(v.get(k)) for _, k, fmt in metrics)] for g, v in groups.items()]
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
    judge = _str((summary.get("run") or {}).get("judge"))
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


def _str(value) -> str:
    return MISSING if value is None or value == "" else str(value)


# --------------------------------------------------------------------------------------------------
# Several runs


def compare_runs(run_dirs: Sequence[str | Path], output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``compare.md`` and a self-contained ``compare.html`` (plots in ``OUTPUT/compare_plots/``).

    The plots folder has its own name so that comparing into a run folder cannot clobber its report.
    """
    if not run_dirs:
        raise ConfigError("compare_runs: give at least one run folder")
    # Into a new or empty folder, an earlier comparison or an eval run folder; never among others' files.
    refuse_foreign(output_dir, "comparison", ours=lambda folder: locked_by(folder) == "evaluation" or
                   is_eval_folder(folder) or _is_comparison(folder / "compare.md"))  # fmt: skip
    run_dirs = [Path(d) for d in run_dirs]
    summaries = [load_summary(d) for d in run_dirs]
    labels = run_labels(run_dirs, summaries)
    blocks: list[Block] = [Heading(1, "routealign comparison")]
    blocks += _runs_table(run_dirs, summaries, labels)
    blocks += [Heading(2, "Headline"), _compare_headline(summaries, labels)]
    blocks.append(Text(f"{INTERVALS} — marks a metric a run lacks."))
    blocks += _scatter_section(summaries, labels)
    blocks += _compare_benchmarks(summaries, labels)
    return _write_documents(Path(output_dir), "compare", "compare_plots", "routealign comparison", blocks)


def _is_comparison(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() == "# routealign comparison"
    except (OSError, UnicodeDecodeError):
        return False


def run_labels(run_dirs: Sequence[Path], summaries: Sequence[dict]) -> list[str]:
    """Column names: each run's name; where names clash, the folder name (then the path, then a number)."""
    labels = [
        str((s.get("run") or {}).get("name") or d.name) for d, s in zip(run_dirs, summaries, strict=True)
    ]
    for fallback in (lambda d: d.name, lambda d: str(d)):
        clashing = {lab for lab in labels if labels.count(lab) > 1}
        labels = [fallback(d) if lab in clashing else lab for d, lab in zip(run_dirs, labels, strict=True)]
    clashing = {lab for lab in labels if labels.count(lab) > 1}
    return [f"{lab} #{i + 1}" if lab in clashing else lab for i, lab in enumerate(labels)]


def _runs_table(run_dirs: Sequence[Path], summaries: Sequence[dict], labels: list[str]) -> list[Block]:
    keys = ["model", "model_kind", "judge", "date", "routealign_version", "seed"]
    rows = []
    for d, s, lab in zip(run_dirs, summaries, labels, strict=True):
        run = s.get("run") or {}
        rows.append([lab, *(_str(run.get(k)) for k in keys), str(d)])
    blocks: list[Block] = [
        Heading(2, "Runs"),
        Table(["Run", "Model", "Kind", "Judge", "Date", "Version", "Seed", "Folder"], rows),
    ]
    unparsed = [
        f"{lab}: {sum(counts.values())} ({_policy_words(s.get('unparseable_policy'))})"
        for s, lab in zip(summaries, labels, strict=True)
        if (counts := unparseable_counts(s))
    ]
    if unparsed:
        text = f"judge verdicts that did not parse, by run: {'; '.join(unparsed)}."
        blocks.append(Text(text, warning=True))
    judges = {(s.get("run") or {}).get("judge") for s in summaries}
    if len(judges) > 1:
        who = ", ".join(
            f"{lab}: {_str((s.get('run') or {}).get('judge'))}"
            for s, lab in zip(summaries, labels, strict=True)
        )
        blocks.append(
            Text(
                f"these runs were judged by different judges ({who}); a judge decides what counts as "
                "harmful or refused, so their safety numbers are not directly comparable.",
                warning=True,
            )
        )
    return blocks


def _compare_headline(summaries: Sequence[dict], labels: list[str]) -> Table:
    per_run = [{lab: (m, fmt) for lab, m, fmt in headline_metrics(s.get("overall") or {})} for s in summaries]
    metric_labels: list[str] = []
    for rows in per_run:
        metric_labels += [lab for lab in rows if lab not in metric_labels]
    table_rows = []
    for metric in metric_labels:
        cells = [_with_n(rows[metric][1], rows[metric][0]) if metric in rows else MISSING for rows in per_run]
        table_rows.append([metric, *cells])
    return Table(["Metric", *labels], table_rows)


def _scatter_section(summaries: Sequence[dict], labels: list[str]) -> list[Block]:
    points, left_out = [], []
    for s, lab in zip(summaries, labels, strict=True):
        overall = s.get("overall") or {}
        over, safe = overall.get("over_refusal_rate"), overall.get("safe_response_rate")
        if over and safe and over.get("value") is not None and safe.get("value") is not None:
            points.append((lab, over, safe))
        else:
            left_out.append(lab)
    blocks: list[Block] = [Heading(2, "Safety vs over-refusal")]
    if points:
        blocks.append(
            Plot(
                "safety_vs_overrefusal.png",
                safety_scatter(points),
                "Safe-response rate vs over-refusal rate per run (95% CI both ways); top left is best",
            )
        )
    if left_out:
        blocks.append(Text(f"Not plotted (no harmful or no over-refusal benchmark): {', '.join(left_out)}."))
    return blocks


def _compare_benchmarks(summaries: Sequence[dict], labels: list[str]) -> list[Block]:
    names: list[str] = []
    for s in summaries:
        names += [b for b in ordered_benchmarks(s["benchmarks"]) if b not in names]
    blocks: list[Block] = []
    for name in names:
        benches = [s["benchmarks"].get(name) for s in summaries]
        kind = next(b["kind"] for b in benches if b)
        # A run whose benchmark of this name is of another kind has none of these metrics.
        benches = [b if b and b.get("kind") == kind else None for b in benches]
        blocks.append(Heading(2, f"{name} ({kind})"))
        rows = [["n", *(_str(b.get("n")) if b else MISSING for b in benches)]]
        rows += [
            [lab, *(fmt(b.get(key)) if b else MISSING for b in benches)]
            for lab, key, fmt in KIND_METRICS.get(kind, [])
        ]
        blocks.append(Table(["Metric", *labels], rows))
        attacks: list[str] = []
        for b in benches:
            attacks += [a for a in ((b or {}).get("by_attack") or {}) if a not in attacks]
        if len(attacks) > 1:
            rows = [
                [a, *(fmt_pct(_attack_metric(b, a, "safe_response_rate")) for b in benches)] for a in attacks
            ]
            blocks += [Heading(3, "Safe-response rate by attack"), Table(["Attack", *labels], rows)]
    return blocks


def _attack_metric(bench: dict | None, attack: str, key: str) -> dict | None:
    return (((bench or {}).get("by_attack") or {}).get(attack) or {}).get(key)


# --------------------------------------------------------------------------------------------------
# Command line (wired into the ``routealign`` command table in cli.py)


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", type=Path, help="a finished `routealign eval` run folder (holds summary.json)"
    )


def cmd_report(args: argparse.Namespace) -> int:
    md_path, html_path = write_report(args.run_dir)  # a bad run folder: ValueError, one line from the CLI
    print(f"report written to {md_path} and {html_path}")
    return 0


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="finished `routealign eval` run folders"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("compare"),
        help="folder for compare.md, compare.html and compare_plots/ (default: ./compare)",
    )


def cmd_compare(args: argparse.Namespace) -> int:
    md_path, html_path = compare_runs(args.run_dirs, args.output)
    print(f"comparison of {len(args.run_dirs)} runs written to {md_path} and {html_path}")
    return 0
