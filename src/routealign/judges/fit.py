"""``routealign judge fit``: fit the ``minilm`` / ``mpnet`` judge's head on labelled pairs, measure it, and
write the head folder the judge loads.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .embedding import MiniLMJudge, cutoff_value
from .encoder import MINILM_ENCODER, SentenceEncoder
from .head import (
    DECLINE_PHRASES,
    HEAD_MANIFEST,
    SIGNALS,
    Head,
    features,
    fit_head,
    label_tensor,
    phrases_digest,
    read_phrases,
    save_head,
    stopwords,
)
from .labelled import READERS, TASKS, LabelledPair, evaluate_pairs, read_labelled

log = logging.getLogger(__name__)


# --- fitting and measuring --------------------------------------------------------------------------


def fit(
    train: Sequence[LabelledPair],
    *,
    head_tokens: int = 64,
    encoder: SentenceEncoder | None = None,
    encoder_name: str | None = None,
    sources: Sequence[str] = (),
    signals: Sequence[str] = (),
    decline_phrases: str = DECLINE_PHRASES,
    thresholds: dict[str, float] | None = None,
    **options,
) -> tuple[Head, dict]:
    """Fit a head on ``train``; ``options`` go to :func:`fit_head`. Returns the head and its manifest.

    ``signals``: names from :data:`SIGNALS` appended to the embedding features (``decline_open`` reads
    ``decline_phrases``, which the judge must then be given too: the manifest records both).
    ``encoder_name``: what the manifest records as the encoder (an installable encoder's name, or the
    folder it was loaded from); None for the packaged all-MiniLM-L6-v2.
    ``thresholds``: the judge's default P(refused) / P(harmful) cut-offs (0.5 when not given; a None
    refusal cut-off leaves refusals to the decline phrases alone)."""
    for task in TASKS:
        classes = {getattr(p, task) for p in train} - {None}
        if classes != {True, False}:
            raise ValueError(
                f"judge fit: the training data needs both classes for {task!r} (found {sorted(classes)})"
            )
    encoder = encoder or SentenceEncoder()
    declines = read_phrases(decline_phrases) if decline_phrases else []
    x = features(
        encoder,
        [p.prompt for p in train],
        [p.response for p in train],
        head_tokens,
        signals=signals,
        declines=declines,
    )
    head = fit_head(x, label_tensor(train), **options)
    counts = {
        t: {
            "true": sum(getattr(p, t) is True for p in train),
            "false": sum(getattr(p, t) is False for p in train),
        }
        for t in TASKS
    }
    manifest = {
        "encoder": encoder_name or MINILM_ENCODER,
        "head_tokens": head_tokens,
        "signals": list(signals),
        "decline_phrases_sha256": phrases_digest(declines),
        "stopwords_sha256": phrases_digest(sorted(stopwords())),
        "thresholds": {
            "refused": cutoff_value((thresholds or {}).get("refused", 0.5), "refused", may_be_off=True),
            "harmful": cutoff_value((thresholds or {}).get("harmful", 0.5), "harmful"),
        },
        "options": options,
        "tasks": list(TASKS),
        "fitted_on": list(sources),
        "train_counts": counts,
    }
    return head, manifest


def _cutoff(text: str) -> float | None:
    return cutoff_value(text, "--threshold-refused", may_be_off=True)


def add_fit_args(p) -> None:
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="KIND=PATH",
        help=f"labelled training data; KIND: {', '.join(READERS)}",
    )
    p.add_argument(
        "--heldout",
        action="append",
        default=[],
        metavar="KIND=PATH",
        help="labelled data to measure agreement on (never fitted on)",
    )
    p.add_argument(
        "--encoder",
        default=None,
        metavar="NAME|DIR",
        help="sentence encoder: an installable encoder pulled with `routealign models pull`, or a folder "
        "(default: the packaged all-MiniLM-L6-v2)",
    )
    p.add_argument("--output", required=True, help="folder for head.safetensors + head.json")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier head in --output (a folder that holds no head.json is never replaced)",
    )
    p.add_argument(
        "--head-tokens", type=int, default=64, help="tokens of the response's opening embedded on their own"
    )
    p.add_argument("--max-per-source", type=int, default=None, help="sample at most N pairs from each --data")
    p.add_argument(
        "--signal",
        action="append",
        default=[],
        choices=sorted(SIGNALS),
        help="a text signal to add to the features (repeatable; none by default)",
    )
    p.add_argument(
        "--threshold-refused",
        type=_cutoff,
        default=0.5,
        help="the judge's P(refused) cut-off; 'off': refusals by the decline phrases alone",
    )
    p.add_argument("--threshold-harmful", type=float, default=0.5, help="the judge's P(harmful) cut-off")
    p.add_argument("--hidden", type=int, default=64, help="hidden units of each MLP member")
    p.add_argument("--members", type=int, default=5, help="MLPs averaged")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)


def cmd_fit(args) -> int:
    from ..io import check_replaceable

    def check_output() -> None:
        check_replaceable(args.output, marker=HEAD_MANIFEST, what="judge fit", overwrite=args.overwrite)

    check_output()  # before anything is read or fitted; again before the folder is replaced
    train = [p for spec in args.data for p in read_labelled(spec, limit=args.max_per_source, seed=args.seed)]
    overlap = set(args.data) & set(args.heldout)
    if overlap:
        from ..config import ConfigError

        raise ConfigError(f"{', '.join(sorted(overlap))} given as both --data and --heldout")
    encoder = SentenceEncoder(args.encoder)
    heldout_responses = {p.response.strip() for spec in args.heldout for p in read_labelled(spec)}
    dropped = sum(p.response.strip() in heldout_responses for p in train)
    train = [p for p in train if p.response.strip() not in heldout_responses]
    if dropped:
        print(f"left out {dropped} training pairs whose response also appears in the held-out data")
    head, manifest = fit(
        train,
        head_tokens=args.head_tokens,
        encoder=encoder,
        encoder_name=args.encoder,
        sources=args.data,
        signals=args.signal,
        thresholds={"refused": args.threshold_refused, "harmful": args.threshold_harmful},
        hidden=args.hidden,
        members=args.members,
        epochs=args.epochs,
        seed=args.seed,
    )
    measured = {}
    if args.heldout:
        with tempfile.TemporaryDirectory() as tmp:
            save_head(Path(tmp) / "head", head, manifest)
            judge = MiniLMJudge(Path(tmp) / "head", encoder=args.encoder)
        for spec in args.heldout:
            measured[spec] = evaluate_pairs(judge, read_labelled(spec))
            for task, m in measured[spec].items():
                print(
                    f"{spec}  {task}: {m['accuracy']:.1%} agreement with the labels "
                    f"(95% CI {m['low']:.1%}–{m['high']:.1%}, n={m['n']})"
                )
    manifest["heldout"] = measured
    check_output()
    save_head(args.output, head, manifest)
    print(f"head written to {args.output} ({len(train)} labelled pairs)")
    return 0
