"""Answers to evaluation prompts: a transformers model or an OpenAI-compatible server, cached as JSONL.

Generation is the slow part of an evaluation and judging is cheap, so every answer is cached under a
key of (backend id, generation settings, prompt): re-running with another judge, or after a crash,
generates only what is missing. The backend id of a loaded model is its fingerprint
(:mod:`routealign.evaluation.fingerprint`: weights by content, dtype, chat template, library versions),
so retrained weights in the same folder are generated afresh; a served model is keyed by base URL and
model name only. Each cache record is one line appended with one ``write`` and flushed, so a kill can at
worst tear the last line, which is skipped (and regenerated) on the next read.

Under ``accelerate launch`` the missing prompts are split across processes (data parallel), each
process answers its share, and the answers are gathered on every process; only the main process
appends to the cache and shows the progress bar (prompts, generated tokens per second, time left).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Prompt = str | list[dict]
Progress = Callable[[int, int | None], None]
"""``progress(prompts answered, tokens generated or None)``, called by a backend as batches finish."""


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    """Longest answer, in tokens."""
    batch_size: int = 8
    """Prompts per ``generate`` call (transformers backend) or concurrent requests (API backend)."""
    do_sample: bool = False
    """Greedy decoding by default; sampling is seeded by ``seed``."""
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    system: str | None = None
    """System prompt placed before every prompt."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"generation.{name}: must be a positive integer, got {value!r}")

    def key_fields(self) -> dict:
        """What changes an answer (``batch_size`` does not, up to numerics)."""
        fields = asdict(self)
        fields.pop("batch_size")
        if not self.do_sample:
            for name in ("temperature", "top_p", "seed"):
                fields.pop(name)
        return fields


class HFBackend:
    """A loaded transformers model (base, PEFT, or a routealign artifact) with its tokenizer.

    ``model_id`` is the cache key's model part: the model's fingerprint id
    (:func:`routealign.evaluation.fingerprint.hf_fingerprint`), not its name, so that new weights under an
    old name miss the cache.
    """

    def __init__(self, model, tokenizer, model_id: str):
        self.model, self.tokenizer, self.id = model, tokenizer, model_id

    def generate(
        self, prompts: Sequence[Prompt], settings: GenerationSettings, progress: Progress | None = None
    ) -> list[dict]:
        from ..generation import generate

        def report(batch) -> None:  # ``tokens``: one decoded piece per generated token, up to the end
            progress(len(batch), sum(len(g.tokens) for g in batch))

        gens = generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
            system=settings.system,
            routing=True,
            on_batch=report if progress is not None else None,
        )
        return [
            {"response": g.text, "routing": route_shares(g.routes), "tokens": len(g.tokens)} for g in gens
        ]


def route_shares(routes: list[str] | None) -> dict[str, float] | None:
    """Share of generated tokens whose largest mean gate weight went to each route."""
    if not routes:
        return None
    counts: dict[str, int] = {}
    for r in routes:
        counts[r] = counts.get(r, 0) + 1
    return {r: n / len(routes) for r, n in counts.items()}


class OpenAIBackend:
    """Any server speaking the OpenAI chat-completions API (vLLM, TGI, SGLang, llama.cpp, ...).

    The key comes from the environment variable ``api_key_env`` (servers that need none accept any
    value; set it to e.g. ``EMPTY``); it never reaches the cache or a log. The cache key's model part is
    the base URL and the model name: the weights behind them cannot be seen from here.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
    ):
        from .fingerprint import api_fingerprint

        self.base_url, self.model = base_url.rstrip("/"), model
        self.api_key_env, self.timeout, self.max_retries, self.backoff = (
            api_key_env,
            timeout,
            max_retries,
            backoff,
        )
        # Credentials in the URL (https://user:key@host) stay out of the id, which summaries record.
        self.id = f"openai:{api_fingerprint(self.base_url, model).parts['base_url']}:{model}"

    def _one(self, prompt: Prompt, settings: GenerationSettings, index: int) -> dict:
        from ..judges.api import chat_completion

        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if settings.system:
            messages = [{"role": "system", "content": settings.system}, *messages]
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature if settings.do_sample else 0.0,
        }
        if settings.do_sample:
            body.update(top_p=settings.top_p, seed=settings.seed + index)
        text = chat_completion(
            self.base_url,
            body,
            api_key_env=self.api_key_env,
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
            who="generation",
        )
        return {"response": text.strip(), "routing": None}

    def generate(
        self, prompts: Sequence[Prompt], settings: GenerationSettings, progress: Progress | None = None
    ) -> list[dict]:
        from concurrent.futures import ThreadPoolExecutor

        def one(ip: tuple[int, Prompt]) -> dict:
            answer = self._one(ip[1], settings, ip[0])
            if progress is not None:
                progress(1, None)  # the server's token count is not read
            return answer

        with ThreadPoolExecutor(settings.batch_size) as pool:
            return list(pool.map(one, enumerate(prompts)))


GENERATIONS = "generations.jsonl"
"""The answer cache's file in a run folder."""


class GenerationCache:
    """``key → {response, routing}`` in one append-only JSONL file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    try:
                        record = json.loads(line)
                        self.entries[record["key"]] = record
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning(
                            "%s, line %d: unreadable cache record skipped (a torn write?)", self.path, n
                        )

    @staticmethod
    def key(backend_id: str, settings: GenerationSettings, prompt: Prompt) -> str:
        blob = json.dumps([backend_id, settings.key_fields(), prompt], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def add(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:  # a line torn by a kill must not swallow the next record
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        with open(self.path, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.entries[record["key"]] = record
            f.flush()
            os.fsync(f.fileno())


def process_state():
    """accelerate's view of the processes; CPU processes too when ``ACCELERATE_USE_CPU`` is set, as
    ``accelerate launch`` sets it for a CPU-only machine (``PartialState`` alone would not join them)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def generate_all(
    backend,
    prompts: Sequence[Prompt],
    settings: GenerationSettings,
    cache: GenerationCache | None = None,
    *,
    progress: str = "",
) -> list[dict]:
    """``{response, routing, cached}`` per prompt, in order, generating only what the cache lacks.

    ``progress``: the label of a progress bar over the prompts to generate (none when empty).
    """
    from accelerate.utils import gather_object

    keys = [GenerationCache.key(backend.id, settings, p) for p in prompts]
    known = cache.entries if cache is not None else {}
    # One prompt may occur twice (e.g. the same request under two benchmarks): answer it once.
    missing = list(dict.fromkeys(k for k in keys if k not in known))
    by_key = {k: prompts[i] for i, k in reversed(list(enumerate(keys)))}
    state = process_state()
    new: dict[str, dict] = {}
    # Cache after every few batches per process, so a crash loses little.
    step = settings.batch_size * 4 * state.num_processes
    bar = None
    if progress and state.is_main_process:
        if len(missing) < len(set(keys)):
            log.info(
                "%s: %d of %d answers from the cache", progress, len(set(keys)) - len(missing), len(set(keys))
            )
        bar = _Progress(progress, len(missing), state.num_processes) if missing else None
    try:
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            with state.split_between_processes(chunk) as mine:
                report = bar.batch if bar is not None else None
                answers = (
                    backend.generate([by_key[k] for k in mine], settings, progress=report) if mine else []
                )
                records = [{"key": k, **a} for k, a in zip(mine, answers, strict=True)]
            if state.num_processes > 1:
                records = gather_object(records)
            if cache is not None and state.is_main_process:
                cache.add(records)
            new.update({r["key"]: r for r in records})
            if bar is not None:
                bar.settle(records)
    finally:
        if bar is not None:
            bar.close()
    return [
        {
            "response": (new.get(k) or known[k])["response"],
            "routing": (new.get(k) or known[k]).get("routing"),
            "cached": k not in new,
        }
        for k in keys
    ]


class _Progress:
    """A tqdm bar over prompts with generated tokens per second and time left (main process only).

    Within a chunk the main process sees only its own batches finish; it counts each as one batch of
    every process (they run in step), and the gathered answers then give the exact count.
    """

    def __init__(self, label: str, total: int, processes: int):
        from tqdm.auto import tqdm

        self.processes, self.started = processes, time.monotonic()
        self.done, self.tokens = 0, 0  # exact, after each chunk
        self.guess, self.guess_tokens = 0, 0  # main's share × processes, within the chunk
        self.counted = True  # every answer so far came with a token count
        self.bar = tqdm(total=total, desc=label, unit="prompt", dynamic_ncols=True, mininterval=1.0)

    def batch(self, prompts: int, tokens: int | None) -> None:
        self.guess += prompts * self.processes
        if tokens is None:
            self.counted = False
        else:
            self.guess_tokens += tokens * self.processes
        self._show(min(self.done + self.guess, self.bar.total), self.tokens + self.guess_tokens)

    def settle(self, records: list[dict]) -> None:
        counts = [r.get("tokens") for r in records]
        self.counted = self.counted and all(isinstance(n, int) for n in counts)
        self.done += len(records)
        self.tokens += sum(n for n in counts if isinstance(n, int))
        self.guess = self.guess_tokens = 0
        self._show(self.done, self.tokens)

    def _show(self, done: int, tokens: int) -> None:
        if self.counted:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{tokens / elapsed:.1f} tok/s", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()
