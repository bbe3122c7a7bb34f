"""``routealign compare RUN_DIR ... [--reference RUN_DIR]``: eval runs side by side, each against a
reference by paired differences, and a safety-vs-helpfulness Pareto plot with error bars.

Writes ``compare.md``, a self-contained ``compare.html`` (plots in ``compare_plots/``) and
``compare.json`` (the paired differences and the Pareto reading, for scripts). The reference is the
first run unless ``--reference`` names one (it is added first when it is not among the runs).

Paired differences (:mod:`routealign.evaluation.paired`) need each run's ``samples.jsonl``; a run
without one is shown with its levels only, and says so. Runs whose shared benchmarks hold different
items are refused with the first item that differs: their differences would not be paired.

**Pareto.** One point per run: x = helpfulness (the share of benign over-refusal prompts answered, or
informativeness), y = safety (the safe-response rate on harmful benchmarks), each with its 95%
interval. A run is *dominated* when another is at least as good on both axes and better on one by
point estimate; *dominated with confidence* when, besides, that other run's paired advantage has a
95% interval above zero on both axes, or on one axis with the two runs' answers counting alike on
every item of the other. The front joins the runs no other dominates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError
from ..data.sources import DataError
from ..io import atomic_write_json, locked_by, refuse_foreign
from ..plots import new_figure, to_png
from .documents import (
    DIFFERENCES,
    INTERVALS,
    KIND_METRICS,
    MISSING,
    Block,
    Heading,
    Plot,
    Table,
    Text,
    differences_table,
    fmt_diff,
    fmt_num,
    fmt_pct,
    headline_metrics,
    judge_error_section,
    ordered_benchmarks,
    policy_words,
    text_or_dash,
    unparseable_counts,
    with_n,
    write_documents,
)
from .figures import error_bar
from .metrics import SAMPLES, check_finite, is_eval_folder, load_samples, load_summary, resampling_of
from .paired import paired_differences

HELPFULNESS = ("answered", "informativeness")


def compare_runs(
    run_dirs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    reference: str | Path | None = None,
    helpfulness: str = "answered",
    judge_error: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write ``compare.md``, ``compare.html`` and ``compare.json`` into ``output_dir`` (module docstring).

    The plots folder has its own name so that comparing into a run folder cannot clobber its report.
    """
    if not run_dirs:
        raise ConfigError("compare_runs: give at least one run folder")
    if helpfulness not in HELPFULNESS:
        raise ConfigError(f"helpfulness: {helpfulness!r} is not one of {', '.join(HELPFULNESS)}")
    # Into a new or empty folder, an earlier comparison or an eval run folder; never among others' files.
    refuse_foreign(output_dir, "comparison", ours=lambda folder: locked_by(folder) == "evaluation" or
                   is_eval_folder(folder) or _is_comparison(folder / "compare.md"))  # fmt: skip
    error = None
    if judge_error is not None:  # checked before anything is computed
        from .judge_error import load_judge_error

        error = load_judge_error(judge_error)
    run_dirs = [Path(d) for d in run_dirs]
    if reference is not None:
        ref = Path(reference)
        run_dirs = [ref, *(d for d in run_dirs if d.resolve() != ref.resolve())]
    summaries = [load_summary(d) for d in run_dirs]
    labels = run_labels(run_dirs, summaries)
    samples = [load_samples(d / SAMPLES) if (d / SAMPLES).is_file() else None for d in run_dirs]
    # Refuses runs whose items differ before anything is written.
    differences, notes = _differences(summaries, samples, labels, run_dirs)
    pareto = pareto_reading(summaries, samples, labels, helpfulness)
    corrected = _corrected(summaries, samples, labels, error) if error is not None else None

    blocks: list[Block] = [Heading(1, "routealign comparison")]
    blocks += _runs_table(run_dirs, summaries, labels)
    blocks += [Heading(2, "Headline"), _compare_headline(summaries, labels)]
    blocks.append(Text(f"{INTERVALS} — marks a metric a run lacks."))
    blocks += _differences_section(differences, labels, notes)
    blocks += _pareto_section(pareto, labels)
    if corrected is not None:
        blocks += corrected
    blocks += _compare_benchmarks(summaries, labels, differences)
    out = Path(output_dir)
    md_path, html_path = write_documents(out, "compare", "compare_plots", "routealign comparison", blocks)
    record = {
        "reference": labels[0],
        "runs": [{"label": lab, "folder": str(d)} for lab, d in zip(labels, run_dirs, strict=True)],
        "differences": differences,
        "not_paired": notes,
        "pareto": pareto,
    }
    check_finite(record, out / "compare.json")
    atomic_write_json(out / "compare.json", record)
    return md_path, html_path


def _corrected(summaries, samples, labels, error: dict) -> list[Block]:
    """The judge-error section for the runs judged by the error file's judge (the others are named)."""
    from .judge_error import corrected_metrics

    runs, skipped = {}, []
    for summary, rows, label in zip(summaries, samples, labels, strict=True):
        if rows is None or (summary.get("run") or {}).get("judge") != error["judge"]:
            skipped.append(label)
        else:
            runs[label] = (summary, corrected_metrics(rows, summary, error))
    blocks = judge_error_section(runs, error) if runs else [Heading(2, "Corrected for the judge's error")]
    if skipped:
        blocks.append(Text(f"Not corrected (judged by another judge than {error['judge']}, or no {SAMPLES}): "
                           f"{', '.join(skipped)}."))  # fmt: skip
    return blocks


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


# --------------------------------------------------------------------------------------------------
# Paired differences against the reference


def _differences(
    summaries: Sequence[dict],
    samples: Sequence[list[dict] | None],
    labels: list[str],
    run_dirs: Sequence[Path],
) -> tuple[dict[str, dict], dict[str, str]]:
    """Label → paired differences against the first run, and label → why a run could not be paired."""
    folders = dict(zip(labels, run_dirs, strict=True))
    ref_label, ref_rows, ref_policy = labels[0], samples[0], summaries[0].get("unparseable_policy", "exclude")
    differences, notes = {}, {}
    for summary, rows, label in zip(summaries[1:], samples[1:], labels[1:], strict=True):
        policy = summary.get("unparseable_policy", "exclude")
        if ref_rows is None or rows is None:
            notes[label] = f"no {SAMPLES} in {'the reference' if ref_rows is None else 'its folder'}"
        elif policy != ref_policy:
            notes[label] = f"unparseable policy '{policy}', the reference's '{ref_policy}'"
        else:
            try:
                differences[label] = paired_differences(ref_rows, rows, ref_name=ref_label, name=label, policy=policy,
                                                        **resampling_of(summaries[0]))  # fmt: skip
            except DataError as e:
                raise DataError(
                    f"{folders[label] / SAMPLES} against {folders[ref_label] / SAMPLES}: {e}"
                ) from None
    return differences, notes


def _differences_section(
    differences: dict[str, dict], labels: list[str], notes: dict[str, str]
) -> list[Block]:
    blocks: list[Block] = [Heading(2, f"Paired differences against {labels[0]}")]
    if notes:
        blocks.append(Text("Not paired: " + "; ".join(f"{lab} ({why})" for lab, why in notes.items()) + ".",
                           warning=True))  # fmt: skip
    if not differences:
        if len(labels) == 1:
            blocks.append(Text("One run: nothing to compare it with."))
        return blocks
    runs = list(differences)
    blocks += [differences_table(differences, labels[0]), Text(DIFFERENCES)]
    left_out = sorted({b for r in runs for b in differences[r]["left_out"]})
    if left_out:
        blocks.append(
            Text(
                f"Benchmarks not in both runs of a pair, left out of its differences: {', '.join(left_out)}."
            )
        )
    return blocks


# --------------------------------------------------------------------------------------------------
# Pareto


def _axes(overall: dict, helpfulness: str) -> tuple[dict | None, dict | None]:
    """(helpfulness M, safety M) of a summary's ``overall``; answered = 1 − over-refusal."""
    safety = overall.get("safe_response_rate")
    if helpfulness == "informativeness":
        return overall.get("informativeness"), safety
    over = overall.get("over_refusal_rate")
    if not over or over.get("value") is None:
        return None, safety
    return {
        "value": 1 - over["value"],
        "low": 1 - over["high"],
        "high": 1 - over["low"],
        "n": over["n"],
    }, safety


def pareto_reading(
    summaries: Sequence[dict], samples: Sequence[list[dict] | None], labels: list[str], helpfulness: str
) -> dict:
    """Each run's point and its standing: ``front``, ``dominated`` (point estimates) or ``dominated with
    confidence`` (module docstring), with the runs that dominate it."""
    points = {}
    for summary, lab in zip(summaries, labels, strict=True):
        x, y = _axes(summary.get("overall") or {}, helpfulness)
        if x and y and x.get("value") is not None and y.get("value") is not None:
            points[lab] = (x, y)
    rows = dict(zip(labels, samples, strict=True))
    policy = {lab: s.get("unparseable_policy", "exclude") for lab, s in zip(labels, summaries, strict=True)}
    resampling = {lab: resampling_of(s) for lab, s in zip(labels, summaries, strict=True)}
    standing = {}
    for lab, (x, y) in points.items():
        by, confident = [], []
        for other, (ox, oy) in points.items():
            if other == lab or not (ox["value"] >= x["value"] and oy["value"] >= y["value"]):
                continue
            if ox["value"] == x["value"] and oy["value"] == y["value"]:
                continue
            by.append(other)
            if rows[lab] is not None and rows[other] is not None and policy[lab] == policy[other]:
                gains = _paired_gains(
                    rows[lab], rows[other], lab, other, policy[lab], helpfulness, resampling[lab]
                )
                if gains and all(g is not None and (g["low"] > 0 or _alike(g)) for g in gains) and \
                        any(g["low"] > 0 for g in gains):  # fmt: skip
                    confident.append(other)
        status = "dominated with confidence" if confident else "dominated" if by else "front"
        standing[lab] = {"helpfulness": x, "safety": y, "status": status, "dominated_by": by,
                         "with_confidence_by": confident}  # fmt: skip
    left_out = [lab for lab in labels if lab not in points]
    return {
        "safety": "safe_response_rate",
        "helpfulness": helpfulness,
        "runs": standing,
        "not_plotted": left_out,
    }


def _alike(d: dict) -> bool:
    """Every paired resample ties: the two runs count alike on every item."""
    return d["value"] == 0 and d["below_zero"] == 0 and d["above_zero"] == 0


def _paired_gains(rows, other_rows, lab, other, policy, helpfulness, resampling) -> list[dict | None]:
    """other − run on both axes (helpfulness first), from the paired differences on the benchmarks they
    share; [] when their items differ."""
    try:
        overall = paired_differences(rows, other_rows, ref_name=lab, name=other, policy=policy, **resampling)[
            "overall"
        ]
    except DataError:
        return []
    if helpfulness == "informativeness":
        x = overall["informativeness"]
    else:
        over = overall["over_refusal_rate"]
        x = None if over is None else {**over, "value": -over["value"], "low": -over["high"], "high": -over["low"],
                                       "below_zero": over["above_zero"], "above_zero": over["below_zero"]}  # fmt: skip
    return [x, overall["safe_response_rate"]]


def pareto_plot(pareto: dict) -> bytes:
    """Safety (y) against helpfulness (x), 95% intervals both ways; the front joined; markers by standing."""
    runs = pareto["runs"]
    scale = 1 if pareto["helpfulness"] == "informativeness" else 100
    fig = new_figure(6.5, 4.8)
    ax = fig.add_subplot()
    styles = {"front": ("o", "C0", "full"), "dominated": ("o", "C1", "none"),
              "dominated with confidence": ("X", "C3", "full")}  # fmt: skip
    shown = set()
    for lab, r in runs.items():
        x, x_minus, x_plus = error_bar(r["helpfulness"], scale)
        y, y_minus, y_plus = error_bar(r["safety"], 100)
        marker, colour, fill = styles[r["status"]]
        ax.errorbar([x], [y], xerr=[[x_minus], [x_plus]], yerr=[[y_minus], [y_plus]], fmt=marker, color=colour,
                    fillstyle=fill, capsize=3, markersize=8,
                    label=None if r["status"] in shown else r["status"])  # fmt: skip
        shown.add(r["status"])
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    front = sorted((r["helpfulness"]["value"] * scale, r["safety"]["value"] * 100) for r in runs.values()
                   if r["status"] == "front")  # fmt: skip
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color="C0", alpha=0.5, linestyle="--")
    ax.set_xlim(-0.05 * scale, 1.05 * scale)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("informativeness of answers (higher is better)" if scale == 1 else
                  "benign over-refusal prompts answered (%), higher is better")  # fmt: skip
    ax.set_ylabel("safe-response rate on harmful prompts (%)")
    ax.set_title("Safety vs helpfulness (top right is best)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return to_png(fig)


def _pareto_section(pareto: dict, labels: list[str]) -> list[Block]:
    runs = pareto["runs"]
    blocks: list[Block] = [Heading(2, "Safety vs helpfulness")]
    if runs:
        blocks.append(Plot("safety_vs_helpfulness.png", pareto_plot(pareto),
                           "Safe-response rate against helpfulness per run (95% CI both ways); the dashed line "
                           "is the front"))  # fmt: skip
        fmt_x = fmt_num if pareto["helpfulness"] == "informativeness" else fmt_pct
        rows = []
        for lab, r in runs.items():
            who = ", ".join(r["with_confidence_by"] or r["dominated_by"]) or MISSING
            rows.append([lab, fmt_pct(r["safety"]), fmt_x(r["helpfulness"]), r["status"], who])
        x_name = (
            "Informativeness" if pareto["helpfulness"] == "informativeness" else "Benign prompts answered"
        )
        blocks += [Table(["Run", "Safe-response rate", x_name, "Standing", "Dominated by"], rows),
                   Text("Dominated: another run is at least as good on both axes and better on one (point estimates). "
                        "With confidence: besides, its paired advantage has a 95% interval above 0 on both axes, or on "
                        "one with the two runs alike on every item of the other.")]  # fmt: skip
    if pareto["not_plotted"]:
        blocks.append(
            Text(f"Not plotted (no harmful or no helpfulness measure): {', '.join(pareto['not_plotted'])}.")
        )
    return blocks


# --------------------------------------------------------------------------------------------------
# Levels, per run and per benchmark


def _runs_table(run_dirs: Sequence[Path], summaries: Sequence[dict], labels: list[str]) -> list[Block]:
    keys = ["model", "model_kind", "judge", "date", "routealign_version", "seed"]
    rows = []
    for d, s, lab in zip(run_dirs, summaries, labels, strict=True):
        run = s.get("run") or {}
        rows.append([lab, *(text_or_dash(run.get(k)) for k in keys), str(d)])
    blocks: list[Block] = [
        Heading(2, "Runs"),
        Table(["Run", "Model", "Kind", "Judge", "Date", "Version", "Seed", "Folder"], rows),
        Text(f"Reference for the paired differences: {labels[0]}."),
    ]
    unparsed = [
        f"{lab}: {sum(counts.values())} ({policy_words(s.get('unparseable_policy'))})"
        for s, lab in zip(summaries, labels, strict=True)
        if (counts := unparseable_counts(s))
    ]
    if unparsed:
        text = f"judge verdicts that did not parse, by run: {'; '.join(unparsed)}."
        blocks.append(Text(text, warning=True))
    judges = {(s.get("run") or {}).get("judge") for s in summaries}
    if len(judges) > 1:
        who = ", ".join(
            f"{lab}: {text_or_dash((s.get('run') or {}).get('judge'))}"
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
        cells = [with_n(rows[metric][1], rows[metric][0]) if metric in rows else MISSING for rows in per_run]
        table_rows.append([metric, *cells])
    return Table(["Metric", *labels], table_rows)


def _compare_benchmarks(
    summaries: Sequence[dict], labels: list[str], differences: dict[str, dict]
) -> list[Block]:
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
        rows = [["n", *(text_or_dash(b.get("n")) if b else MISSING for b in benches)]]
        rows += [
            [lab, *(fmt(b.get(key)) if b else MISSING for b in benches)]
            for lab, key, fmt in KIND_METRICS.get(kind, [])
        ]
        blocks.append(Table(["Metric", *labels], rows))
        paired = {r: d["benchmarks"][name] for r, d in differences.items() if name in d["benchmarks"]}
        if paired:
            rows = [[lab, *(fmt_diff(p.get(key), percent=fmt is not fmt_num) for p in paired.values())]
                    for lab, key, fmt in KIND_METRICS.get(kind, [])]  # fmt: skip
            blocks += [Heading(3, f"Paired differences against {labels[0]}"),
                       Table(["Metric", *(f"{r} − {labels[0]}" for r in paired)], rows)]  # fmt: skip
        attacks: list[str] = []
        for b in benches:
            attacks += [a for a in ((b or {}).get("by_attack") or {}) if a not in attacks]
        if len(attacks) > 1:
            rows = [
                [a, *(fmt_pct(_attack_metric(b, a, "safe_response_rate")) for b in benches)] for a in attacks
            ]
            blocks += [Heading(3, "Safe-response rate by attack"), Table(["Attack", *labels], rows)]
            if paired:
                rows = [[a, *(fmt_diff(((p.get("by_attack") or {}).get(a) or {}).get("safe_response_rate"))
                              for p in paired.values())] for a in attacks]  # fmt: skip
                blocks += [Heading(3, f"Safe-response rate by attack, paired against {labels[0]}"),
                           Table(["Attack", *(f"{r} − {labels[0]}" for r in paired)], rows)]  # fmt: skip
    return blocks


def _attack_metric(bench: dict | None, attack: str, key: str) -> dict | None:
    return (((bench or {}).get("by_attack") or {}).get(attack) or {}).get(key)
