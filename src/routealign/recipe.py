"""The recipe contract: what every method shares, in one place.

A method is a :class:`Recipe`: its config class (a :class:`RecipeConfig`), a ``prepare`` that loads
and checks everything before anything is claimed, and its named stages in order, each declaring the
files that mark it done. :func:`run_recipe` owns the rest, the same way for every method:

1. skip a run whose artifact is already complete (before loading anything);
2. ``prepare(cfg, accelerator)``: every mistake a config can hold fails here, in seconds;
3. claim ``output_dir`` (a lock naming the command, the config recorded; a folder holding a different
   run that trained anything is refused, one that trained nothing is taken over);
4. repair a replacement a kill interrupted, then run each stage in order: a stage whose files are all
   there is skipped (or its saved result loaded), any other runs and picks up its own partial work.

The artifact a recipe leaves records its ``kind`` in the manifest (``mixture``: PEFT LoRA experts behind
trained gates; ``model``: a whole transformers model folder), and :func:`routealign.load` dispatches
on that kind, so a new method whose artifact is one of these needs no loader. Adding a method is one
package under ``routealign/methods/`` and one line in its ``__init__``; see the docs' "Adding a method".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

from accelerate import Accelerator

from .config import ConfigError, ModelConfig, TrainConfig, from_dict, to_dict
from .distributed import claimed, on_main
from .io import atomic_write_json, json_object_with, recover_tree, refuse_foreign
from .models.artifact import KINDS, MANIFEST
from .training import Callback, Stage

log = logging.getLogger(__name__)

LOGGING_ONLY = ("log_every", "save_every")
"""Train fields that change how a run reports, not what it computes: a resume may change them."""


@dataclass
class RecipeConfig:
    """What every recipe's config holds: subclasses add their stages' blocks, each with a ``train``
    block where it trains (one :class:`~routealign.config.TrainConfig`). Checked here for every recipe:
    ``recipe`` names it, ``output_dir`` names a folder, every stage trains under one mixed precision,
    and every stage's training seed is an integer ``torch.manual_seed`` accepts."""

    NAME: ClassVar[str] = ""
    """The recipe this config is for; ``recipe`` must say the same."""

    recipe: str = ""
    """Names the recipe; ``routealign train`` dispatches on it."""
    output_dir: str = "runs/run"
    """Run folder: the artifact, and the training state a killed run resumes from."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model: hub id, local folder or embedded name, with dtype, device and chat template."""

    def __post_init__(self) -> None:
        if self.recipe != self.NAME:
            raise ConfigError(f"recipe: expected {self.NAME!r}, got {self.recipe!r}")
        if not str(self.output_dir).strip():
            raise ConfigError("output_dir: must name a folder")
        for name, train in self.train_blocks():
            if (
                isinstance(train.seed, bool)
                or not isinstance(train.seed, int)
                or not -(2**63) <= train.seed < 2**64
            ):
                key = f"{name}.train.seed".lstrip(".")
                raise ConfigError(f"{key}: must be an integer torch.manual_seed accepts, got {train.seed!r}")
        precisions = {train.precision for _, train in self.train_blocks()}
        if len(precisions) > 1:
            # accelerate fixes mixed precision once per process.
            names = [f"{name}.train.precision".lstrip(".") for name, _ in self.train_blocks()]
            raise ConfigError(f"{', '.join(names[:-1])} and {names[-1]}: must be equal")

    def train_blocks(self) -> list[tuple[str, TrainConfig]]:
        """(block name, its ``train``) for every top-level block that trains, in field order; a top-level
        ``train`` block itself is named ``""``."""
        found = []
        for f in fields(self):
            block = getattr(self, f.name)
            if isinstance(block, TrainConfig):
                found.append(("", block))
            elif is_dataclass(block) and isinstance(getattr(block, "train", None), TrainConfig):
                found.append((f.name, block.train))
        return found

    @property
    def precision(self) -> str:
        """The run's mixed precision (every stage's, checked equal)."""
        blocks = self.train_blocks()
        return blocks[0][1].precision if blocks else "no"


@dataclass(frozen=True)
class Step:
    """One named stage of a recipe."""

    name: str
    run: Callable[[Run], Any]
    """Does the stage's work; what it returns is ``run.results[name]`` for the stages after it."""
    marks: tuple[str, ...] = ()
    """Files under the run folder that mark the stage done, all of them written last and atomically.
    Empty: the stage always runs (it resumes its own partial work, or is cheap)."""
    load: Callable[[Run], Any] | None = None
    """For a done stage whose result later stages need: read it back instead of running the stage."""


@dataclass(frozen=True)
class Recipe:
    name: str
    config: type[RecipeConfig]
    prepare: Callable[[Any, Accelerator], Any]
    """``prepare(cfg, accelerator)``: load and check everything, before the folder is claimed."""
    stages: Callable[[Any, Any], Sequence[Step]]
    """``stages(cfg, prepared)``: the named stages in order (how many can depend on the data, e.g. one
    expert per domain)."""
    kind: str
    """The artifact's kind, recorded in its manifest (one of :data:`routealign.models.artifact.KINDS`)."""
    leaves: tuple[str, ...] = ()
    """Glob patterns (under the run folder) of what a partly trained run of this recipe leaves: a
    different config must not be mixed with that work."""
    records: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(JSON file, keys it holds) besides ``run_config.json`` that only a run of this recipe writes: a
    folder holding one is a run folder, which a later run may be given (RASA's record of stage 0)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"recipe {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.config.NAME != self.name:
            raise ValueError(f"recipe {self.name}: its config is for {self.config.NAME!r}")


RECIPES: dict[str, Recipe] = {}
"""Every registered recipe by name (``routealign.methods`` registers the shipped ones)."""


def register(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES and RECIPES[recipe.name] is not recipe:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


@dataclass
class Run:
    """What a stage gets: the config, the process's accelerator, the run folder, what ``prepare``
    loaded, the callbacks, and the results of the stages before it by name."""

    cfg: Any
    accelerator: Accelerator
    out: Path
    prepared: Any
    callbacks: Sequence[Callback] = ()
    results: dict[str, Any] = field(default_factory=dict)

    def training_stage(self, name: str, checkpoint: str, model, examples, collate, cfg, loss_fn) -> Stage:
        """A training stage in this run's folder: resume state under ``checkpoints/<checkpoint>``, the
        shared JSONL log under ``logs/``."""
        return Stage(
            name=name,
            model=model,
            examples=examples,
            collate=collate,
            cfg=cfg,
            loss_fn=loss_fn,
            checkpoint_dir=self.out / "checkpoints" / checkpoint,
            log_file=self.out / "logs" / "train.jsonl",
            callbacks=self.callbacks,
        )


def run_recipe(recipe: Recipe, cfg: RecipeConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Run ``recipe`` on ``cfg`` as the module docstring describes; returns the run folder."""
    out = Path(cfg.output_dir)

    def ours(folder: Path) -> bool:
        return is_run_folder(folder, recipe)

    accelerator = Accelerator(mixed_precision=cfg.precision)
    where = (accelerator.process_index + 1, accelerator.num_processes, accelerator.device)
    log.info("process %d of %d on %s, mixed precision %s", *where, accelerator.mixed_precision)
    try:
        # Before any loading: a finished run costs nothing. Read on the main process, so that every
        # process takes the same branch.
        if on_main(
            accelerator,
            lambda: refuse_foreign(out, "training", ours) or finished_or_refused(out, cfg, recipe),
        ):
            log.info("%s already holds this run's finished artifact; nothing to train", out)
            return out
        prepared = recipe.prepare(cfg, accelerator)

        def record_run() -> bool:  # under the folder's lock, on the main process
            recover_tree(out)  # first: a replacement a kill interrupted holds work the check must see
            if finished_or_refused(out, cfg, recipe):  # finished while this process was preparing
                return True
            atomic_write_json(out / "run_config.json", to_dict(cfg))
            return False

        with claimed(out, "training", accelerator, record_run, ours=ours) as finished:
            if finished:
                log.info("%s already holds this run's finished artifact; nothing to train", out)
                return out
            run = Run(cfg, accelerator, out, prepared, callbacks)
            for step in recipe.stages(cfg, prepared):
                done = bool(step.marks) and on_main(
                    accelerator, lambda step=step: all((out / m).is_file() for m in step.marks)
                )
                if done and step.load is None:
                    log.info("%s: already done (%s)", step.name, ", ".join(step.marks))
                    continue
                run.results[step.name] = step.load(run) if done else step.run(run)
        return out
    finally:
        accelerator.end_training()  # every way out leaves the process group (one torn down at exit can abort)


def _result_fields(cfg: RecipeConfig) -> dict:
    """The config without the fields a resume may change (every ``train`` block's logging fields)."""
    data = json.loads(json.dumps(to_dict(cfg)))
    for name, _ in cfg.train_blocks():
        train = data[name]["train"] if name else data["train"]
        for key in LOGGING_ONLY:
            train.pop(key, None)
    return data


def is_run_folder(folder: Path, recipe: Recipe | None = None) -> bool:
    """A training run's folder from before its lock recorded the holder: its ``run_config.json`` names a
    recipe, or it holds a record only a run of ``recipe`` or of a registered recipe writes
    (:attr:`Recipe.records`)."""
    records = [*(recipe.records if recipe else ()), *(r for known in RECIPES.values() for r in known.records)]
    return json_object_with(folder / "run_config.json", "recipe") or any(
        json_object_with(folder / name, *keys) for name, keys in records
    )


def finished_or_refused(out: Path, cfg, recipe: Recipe | None = None) -> bool:
    """A folder resumes only the run it was started for: finished experts and checkpoints in it are
    reused, a different config is refused while there is any of them. A run that failed before it
    trained anything (its first step ran out of memory, say) leaves nothing to resume: the corrected
    config takes the folder over. True when this run already finished (its artifact is complete).
    Reads only; the recipe writes, once it holds the folder."""
    path = out / "run_config.json"
    if not path.is_file():
        return False
    if _result_fields(from_dict(type(cfg), json.loads(path.read_text()))) != _result_fields(cfg):
        if trained_anything(out, recipe):
            raise ConfigError(
                f"{out}: holds a run with a different config ({path}); "
                "pick another output_dir or delete that folder"
            )
        log.info("%s: the run recorded there trained nothing; this config replaces it", out)
        return False
    return (out / MANIFEST).is_file()


def trained_anything(out: Path, recipe: Recipe | None = None) -> bool:
    """An artifact, a checkpoint, or what ``recipe`` or any registered recipe leaves partway (finished
    experts, RASA's pairs or stage state): work that a different config must not mix with."""
    patterns = [MANIFEST, "checkpoints/**/trainer_state.json", *(recipe.leaves if recipe else ())]
    patterns += [p for registered in RECIPES.values() for p in registered.leaves]
    return any(next(out.glob(p), None) is not None for p in patterns)
