"""resolve's preflight: incompatible or broken sources fail fast with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frankenmoe.checkpoints.sources import locate, preflight
from frankenmoe.errors import IncompatibleModelsError, InputFileError
from frankenmoe.recipe import ModelRef
from tests.conftest import tiny_mistral


@pytest.fixture(scope="module")
def tok_source(tmp_path_factory, fixture_models):
    return fixture_models / "base"


def located(path, role):
    return locate(role, ModelRef(id=str(path)), Path())


def make(tmp_path, name, tok, **kw):
    return located(tiny_mistral(tmp_path / name, tokenizer_from=tok, **kw), name)


def test_compatible_models_pass(tmp_path, tok_source):
    base, a = make(tmp_path, "base", tok_source), make(tmp_path, "a", tok_source, seed=1)
    summary = preflight([base, a], trust_remote_code=False)
    assert summary["a"]["hidden_size"] == 64 and summary["a"]["tensors"] > 0


@pytest.mark.parametrize(
    "field, kw",
    [
        ("hidden_size", {"hidden": 128}),
        ("intermediate_size", {"inter": 256}),
        ("num_hidden_layers", {"layers": 3}),
    ],
)
def test_shape_mismatch_names_both_models_and_field(tmp_path, tok_source, field, kw):
    base, odd = make(tmp_path, "base", tok_source), make(tmp_path, "odd", tok_source, **kw)
    with pytest.raises(IncompatibleModelsError) as e:
        preflight([base, odd], trust_remote_code=False)
    msg = str(e.value)
    assert msg.startswith(f"{field} differs: base ") and str(tmp_path / "odd") in msg


def test_tokenizer_mismatch(tmp_path, tok_source):
    base, other = make(tmp_path, "base", tok_source), make(tmp_path, "other", tok_source)
    data = json.loads((other.path / "tokenizer.json").read_text())
    data["model"]["merges"] = data["model"]["merges"][:-1]
    (other.path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(IncompatibleModelsError, match=r"tokenizer differs \(merges\)"):
        preflight([base, other], trust_remote_code=False)


def test_unsupported_architecture(tmp_path, tok_source):
    base = make(tmp_path, "base", tok_source)
    cfg = json.loads((base.path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (base.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleModelsError, match="model_type 'gpt2'; supported: llama, mistral"):
        preflight([base], trust_remote_code=False)


def test_remote_code_needs_permission(tmp_path, tok_source):
    base = make(tmp_path, "base", tok_source)
    cfg = json.loads((base.path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (base.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleModelsError, match="trust_remote_code: true"):
        preflight([base], trust_remote_code=False)


def test_truncated_safetensors_is_named(tmp_path, tok_source):
    base = make(tmp_path, "base", tok_source)
    weights = base.path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(InputFileError, match=r"model\.safetensors: truncated or corrupt"):
        preflight([base], trust_remote_code=False)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(InputFileError, match="not a valid safetensors file"):
        preflight([base], trust_remote_code=False)


def test_bin_only_and_missing_config(tmp_path, tok_source):
    base = make(tmp_path, "base", tok_source)
    (base.path / "model.safetensors").rename(base.path / "pytorch_model.bin")
    with pytest.raises(InputFileError, match=r"only PyTorch \.bin weights"):
        preflight([base], trust_remote_code=False)
    (base.path / "config.json").unlink()
    with pytest.raises(InputFileError, match="config.json is missing"):
        preflight([base], trust_remote_code=False)


def test_missing_folder_that_is_no_hub_id():
    with pytest.raises(InputFileError, match="no such folder, and not a Hub id"):
        locate("base", ModelRef(id="./nowhere/at/all"), Path())


def test_hub_id_unavailable_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        with pytest.raises(InputFileError, match="not available from the Hub"):
            locate("base", ModelRef(id="someorg/not-cached"), Path())
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)


def test_a_local_folder_with_an_at_sign_is_a_folder_not_a_revision(tok_source, tmp_path):
    from frankenmoe.recipe import parse_recipe

    folder = tmp_path / "base@v2"
    folder.symlink_to(tok_source, target_is_directory=True)
    ref = parse_recipe(
        {
            "base_model": "base@v2",
            "experts": [
                {"source_model": "a", "positive_prompts": ["x"]},
                {"source_model": "b", "positive_prompts": ["y"]},
            ],
        },
        "r",
        root=tmp_path,
    ).base_model
    got = locate("base", ref, tmp_path)
    assert got.path == tok_source.resolve() and got.commit is None
