"""resolve with Hub ids: the real snapshot_download over HTTP (against the stand-in),
pinned revisions, the commit SHA recorded, and HF_HUB_OFFLINE served from the cache."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from tests.conftest import HUB_TOKEN as TOKEN
from tests.conftest import example_data, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def hub_with_models(hub, fixture_models, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the stand-in has no Xet storage
    api = HfApi(endpoint=hub.url, token=TOKEN)
    shas = {}
    for name in ("base", "expert-code", "expert-prose"):
        api.create_repo(f"toy/{name}", exist_ok=True)
        shas[name] = api.upload_folder(
            repo_id=f"toy/{name}", folder_path=fixture_models / name, commit_message="upload"
        ).oid
    return hub, shas


def test_hub_ids_resolve_pin_and_merge_like_local_folders(example, hub_with_models, tmp_path):
    server, shas = hub_with_models
    data = example_data()
    data["name"] = "tiny-2x-hub"
    data["base_model"] = {"id": "toy/base", "revision": shas["base"]}
    data["experts"][0]["source_model"] = "toy/expert-code"
    data["experts"][1]["source_model"] = f"toy/expert-prose@{shas['expert-prose']}"
    recipe = tmp_path / "hub.yaml"
    recipe.write_text(yaml.safe_dump(data))
    env = {
        "HF_ENDPOINT": server.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
    }
    build, dist = tmp_path / "build", tmp_path / "dist"
    proc = run_cli("build", str(recipe), "--until", "gates", build=build, dist=dist, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(next((build / "tiny-2x-hub" / "resolve").glob("*/record.json")).read_text())
    models = {m["role"]: m for m in record["result"]["models"]}
    assert models["base"]["commit"] == shas["base"] and models["experts[0]"]["commit"] == shas["expert-code"]
    assert models["base"]["hub_id"] == "toy/base"
    assert set(models["base"]["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    digest = lambda folder: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    from_hub, from_local = digest(dist / "tiny-2x-hub" / "merged"), digest(example["merged"])
    assert set(from_local) - set(from_hub) == {
        "README.md",
        "routing.png",
        "routing.html",
        "build.json",
    }  # card and manifest did not run here
    assert from_hub == {k: v for k, v in from_local.items() if k in from_hub}  # same bytes as from local folders

    lock = run_cli("lock", str(recipe), build=build, env=env)
    assert lock.returncode == 0, lock.stderr
    pinned = json.loads((tmp_path / "hub.lock.json").read_text())["stages"]["resolve"]  # the resolve stage's pins
    assert pinned["base"]["commit"] == shas["base"] and pinned["experts[0]"]["commit"] == shas["expert-code"]
    assert pinned["experts[1]"]["commit"] == shas["expert-prose"]  # the recipe names it toy/expert-prose@<sha>

    offline = run_cli(
        "build",
        str(recipe),
        "--until",
        "merge",
        build=build,
        dist=dist,
        env={**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert offline.returncode == 0, offline.stderr
    assert "resolve   cached" in offline.stdout and "merge     cached" in offline.stdout


def test_unknown_revision_is_one_line(hub_with_models, tmp_path):
    server, _ = hub_with_models
    data = example_data()
    data["base_model"] = {"id": "toy/base", "revision": "no-such-branch"}
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(data))
    env = {
        "HF_ENDPOINT": server.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
    }
    proc = run_cli(
        "build", str(recipe), "--until", "resolve", build=tmp_path / "build", dist=tmp_path / "dist", env=env
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert (
        "error: base: revision 'no-such-branch' not found in toy/base" in proc.stderr and "Traceback" not in proc.stderr
    )
