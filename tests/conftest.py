"""Shared helpers: the repo root, the fixture models, and running the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frankenmoe.support.settings import reused_build

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures" / "tiny"
EXAMPLE = REPO / "recipes" / "tiny-2x.yaml"


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test starts from the environment the session had: a library imported in
    this process may set variables its subprocesses would inherit (GPTQModel's
    tokenicer sets HF_HOME and HF_HUB_CACHE to /tmp/tokenicer_hf_home at import, so
    later CLI runs read Hub files from a cache kept between sessions, not the stand-in)."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def example_data(recipe: Path = EXAMPLE) -> dict:
    """A recipe's mapping with its relative model paths made absolute, so the test
    can write it into any folder (relative paths follow the recipe file)."""
    import yaml

    data = yaml.safe_load(recipe.read_text())
    absolute = lambda ref: str((recipe.parent / ref).resolve()) if ref.startswith(".") else ref
    data["base_model"] = absolute(data["base_model"])
    for expert in data["experts"]:
        expert["source_model"] = absolute(expert["source_model"])
    return data


def run_cli(
    *args: str,
    build: Path | None = None,
    dist: Path | None = None,
    cwd: Path = REPO,
    env: dict | None = None,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    """Run `frankenmoe ARGS` as a user would, in its own process."""
    full_env = {**os.environ, "FRANKENMOE_NO_PROGRESS": "1", **(env or {})}
    if build:
        full_env["FRANKENMOE_BUILD_DIR"] = str(build)
    if dist:
        full_env["FRANKENMOE_DIST_DIR"] = str(dist)
    return subprocess.run(
        [sys.executable, "-m", "frankenmoe", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def fixture_models() -> Path:
    """The trained example models (made by `make fixtures`; trained here if missing)."""
    from frankenmoe.example.catalog import ensure_tiny

    return ensure_tiny(FIXTURES, log=lambda _: None)


@pytest.fixture(scope="session")
def example(tmp_path_factory, fixture_models) -> dict:
    """The example recipe built once, through the real CLI, into a temporary folder.

    With FRANKENMOE_TEST_EXAMPLE set to a folder holding a finished build of it
    (`build/` and `dist/`, as .ci/run's repro-check leaves), that build is
    hard-linked in and the CLI finds every stage cached: CI need not build the
    example a third time."""
    root = tmp_path_factory.mktemp("example")
    reuse = reused_build("example")
    if reuse:
        for part in ("build", "dist"):
            subprocess.run(["cp", "-al", str(Path(reuse) / part), str(root / part)], check=True)
    proc = run_cli("build", str(EXAMPLE), build=root / "build", dist=root / "dist")
    assert proc.returncode == 0, proc.stderr
    dist = root / "dist" / "tiny-2x"
    return {"root": root, "merged": dist / "merged", "awq": dist / "awq", "out": proc.stdout}


def page_data(page: Path) -> dict:
    """The numbers a page carries (its JSON block), as the browser reads them."""
    text = page.read_text(encoding="utf-8")
    block = text.split('<script type="application/json" id="routing-data">', 1)[1].split("</script>", 1)[0]
    return json.loads(block.replace("<\\/", "</"))


HUB_TOKEN = "hf_standinSECRETtoken0123456789abcdef"  # recognizable, so tests can grep for leaks


@pytest.fixture
def hub(tmp_path):
    """A running local Hub stand-in (tests/hub_standin.py) that accepts HUB_TOKEN."""
    from tests.hub_standin import HubStandin

    server = HubStandin(tmp_path / "hub", tokens=[HUB_TOKEN])
    server.start()
    yield server
    server.stop()


def write_recipe(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_mistral(
    path: Path,
    *,
    hidden: int = 64,
    inter: int = 128,
    layers: int = 2,
    vocab: int = 300,
    seed: int = 0,
    tokenizer_from: Path | None = None,
    model_type: str = "mistral",
) -> Path:
    """A random tiny Llama/Mistral checkpoint for preflight tests (seconds to make)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg_cls, model_cls = (
        (MistralConfig, MistralForCausalLM) if model_type == "mistral" else (LlamaConfig, LlamaForCausalLM)
    )
    cfg = cfg_cls(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model_cls(cfg).to(torch.float16).save_pretrained(path)
    if tokenizer_from:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(path)
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


REAL_RECIPE = REPO / "recipes" / "smollm2-2x.yaml"


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> dict:
    """The real example (recipes/smollm2-2x.yaml) built once per test session through the
    CLI; with FRANKENMOE_TEST_REAL_EXAMPLE, that finished build is hard-linked in."""
    from frankenmoe.example.catalog import ensure_example

    ensure_example("smollm2", REPO / "fixtures", log=lambda _: None)
    root = tmp_path_factory.mktemp("real")
    reuse = reused_build("real")
    if reuse:
        for part in ("build", "dist"):
            subprocess.run(["cp", "-al", str(Path(reuse) / part), str(root / part)], check=True)
    proc = run_cli("build", str(REAL_RECIPE), build=root / "build", dist=root / "dist", timeout=3600)
    assert proc.returncode == 0, proc.stderr
    dist = root / "dist" / "smollm2-2x"
    return {
        "root": root,
        "dist": dist,
        "out": proc.stdout,
        "verify": json.loads(next((root / "build" / "smollm2-2x" / "verify").glob("*/report/verify.json")).read_text()),
    }
