"""push against the local Hub stand-in, with the real huggingface_hub client over HTTP."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import HUB_TOKEN as TOKEN
from tests.conftest import example_data, run_cli

pytestmark = pytest.mark.slow


def push_recipe(tmp_path: Path, **verify) -> Path:
    data = example_data()
    data["name"] = "tiny-2x"
    data["verify"].update(verify)
    data["publish"] = {
        "push": True,
        "private": True,
        "merged": {"repo_id": "me/tiny-2x"},
        "awq": {"repo_id": "me/tiny-2x-AWQ"},
    }
    path = tmp_path / "push.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def push(example, hub, recipe, dist, *extra):
    # The stand-in is a Hub without Xet storage: the client takes its LFS path only
    # when told (it picks Xet by itself whenever hf_xet is installed).
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(dist.parent / "hf-home"),
    }
    return run_cli(*extra or ("build",), str(recipe), build=example["root"] / "build", dist=dist, env=env)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_token_nowhere(*roots: Path, texts: list[str]) -> None:
    for text in texts:
        assert TOKEN not in text
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file():
                assert TOKEN.encode() not in f.read_bytes(), f


def test_build_pushes_both_folders_and_a_second_push_commits_nothing(example, hub, tmp_path):
    from huggingface_hub import snapshot_download

    dist = tmp_path / "dist"
    recipe = push_recipe(tmp_path)
    proc = push(example, hub, recipe, dist)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for folder, repo in (("merged", "me/tiny-2x"), ("awq", "me/tiny-2x-AWQ")):
        commits = hub.commits(repo)
        assert len(commits) == 1 and "frankenmoe build" in commits[0]["message"]
        assert all(meta["lfs"] for name, meta in commits[0]["files"].items() if name.endswith(".safetensors"))
        got = Path(snapshot_download(repo, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "dl"))
        local = dist / "tiny-2x" / folder
        assert {p.name: sha(p) for p in got.iterdir() if p.is_file() and p.name != ".gitattributes"} == {
            p.name: sha(p) for p in local.iterdir() if p.is_file()
        }
    again = push(example, hub, recipe, dist, "push")  # the command, over the published folders
    assert again.returncode == 0, again.stderr
    assert len(hub.commits("me/tiny-2x")) == 1 and len(hub.commits("me/tiny-2x-AWQ")) == 1
    assert_token_nowhere(example["root"] / "build", dist, texts=[proc.stdout, proc.stderr, again.stdout, again.stderr])


def test_transient_500_is_retried(example, hub, tmp_path):
    hub.fail(500, times=1, path_contains="/commit/")
    proc = push(example, hub, push_recipe(tmp_path), tmp_path / "dist")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(hub.commits("me/tiny-2x")) == 1 and len(hub.commits("me/tiny-2x-AWQ")) == 1


def test_push_that_keeps_failing_commits_nothing_and_says_what_to_rerun(example, hub, tmp_path):
    hub.fail(500, times=1000, path_contains="/commit/")
    proc = push(example, hub, push_recipe(tmp_path), tmp_path / "dist")
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert "nothing was committed" in proc.stderr and "rerun" in proc.stderr and "Traceback" not in proc.stderr
    assert hub.commits("me/tiny-2x") == []
    assert_token_nowhere(example["root"] / "build", tmp_path / "dist", texts=[proc.stdout, proc.stderr])


def test_failed_verify_is_not_pushed(example, hub, tmp_path):
    recipe = push_recipe(tmp_path, max_mean_kl=1e-9, fail_on_mismatch=False)
    proc = push(example, hub, recipe, tmp_path / "dist")
    assert proc.returncode == 7, proc.stderr
    # the last lines (before them, progress of a check that ran for over 10 s on a busy machine)
    lines = proc.stderr.strip().splitlines()
    assert not [l for l in lines[:-2] if l.startswith("error:")], lines
    assert lines[-2:] == [
        f"error: push: {tmp_path / 'dist' / 'tiny-2x' / folder} failed quantization_parity, so it is not pushed; see "
        "its verify.md, or set publish.allow_failed: true to push it anyway (its card then says so in its first line)"
        for folder in ("merged", "awq")
    ]
    assert hub.commits("me/tiny-2x") == [] and hub.commits("me/tiny-2x-AWQ") == []


def test_allow_failed_pushes_and_the_card_says_so_first(example, hub, tmp_path):
    recipe = push_recipe(tmp_path, max_mean_kl=1e-9, fail_on_mismatch=False)
    data = yaml.safe_load(recipe.read_text())
    data["publish"]["allow_failed"] = True
    recipe.write_text(yaml.safe_dump(data))
    proc = push(example, hub, recipe, tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    assert len(hub.commits("me/tiny-2x-AWQ")) == 1
    card = (tmp_path / "dist" / "tiny-2x" / "awq" / "README.md").read_text()
    body = card.split("---\n", 2)[2].lstrip("\n")
    assert body.startswith("> **Warning: this model failed verification (quantization_parity) and was published")


def test_a_tampered_cached_file_is_never_pushed(example, hub, tmp_path):
    """Edited in place through dist/ (its files are hard links into the cache): push
    finds the cached stage changed and refuses, naming it; a build reruns the stage
    and the Hub then gets the true bytes. On a copy of the build: the shared one
    stays as the other tests need it."""
    import shutil

    build = tmp_path / "build"
    shutil.copytree(example["root"] / "build", build)  # real copies, not links
    dist = tmp_path / "dist"
    recipe = push_recipe(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    data["publish"]["push"] = False
    recipe.write_text(yaml.safe_dump(data))
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}
    assert run_cli("build", str(recipe), build=build, dist=dist, env=env).returncode == 0
    config = dist / "tiny-2x" / "awq" / "config.json"
    original = config.read_bytes()
    config.write_bytes(original.replace(b'"bits": 4', b'"bits": 3'))  # same size, same inode
    proc = run_cli("push", str(recipe), build=build, dist=dist, env=env)
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: quantize: not built for this recipe yet"), proc.stderr
    assert hub.commits("me/tiny-2x-AWQ") == []
    rebuilt = run_cli("build", str(recipe), build=build, dist=dist, env=env)
    assert re.search(r"^quantize\s+ran", rebuilt.stdout, re.M), rebuilt.stdout + rebuilt.stderr
    assert config.read_bytes() == original
    proc = run_cli("push", str(recipe), build=build, dist=dist, env=env)
    assert proc.returncode == 0, proc.stderr
    (commit,) = hub.commits("me/tiny-2x-AWQ")
    assert commit["files"]["config.json"]["sha256"] == hashlib.sha256(original).hexdigest()


def test_a_dist_folder_that_differs_from_its_record_is_refused(tmp_path):
    from frankenmoe.errors import PublishError
    from frankenmoe.hub.push import check_folder
    from frankenmoe.support.hashing import HashState

    folder = tmp_path / "awq"
    folder.mkdir()
    (folder / "config.json").write_text('{"bits": 3}')
    record = {"config.json": hashlib.sha256(b'{"bits": 4}').hexdigest()}
    with pytest.raises(PublishError, match="config.json differs from the sha256 in its build record"):
        check_folder(folder, record, HashState(tmp_path / "state.json"))


def test_a_folder_another_build_published_is_refused(tmp_path):
    """Push checks each folder's build.json against the recipe's finished build: its
    build id, then its own bytes, before any file or check is read."""
    import json

    from frankenmoe.errors import PublishError
    from frankenmoe.hub.push import push_build
    from frankenmoe.recipe import PublishSection
    from frankenmoe.support.hashing import HashState

    folder = tmp_path / "dist" / "merged"
    folder.mkdir(parents=True)
    manifest = folder / "build.json"
    manifest.write_text(json.dumps({"format": "frankenmoe-build/1", "build_id": "old", "files": {}, "stages": {}}))
    publish = PublishSection.model_validate({"merged": {"repo_id": "me/m"}})
    state = HashState(tmp_path / "state.json")
    recorded = {"merged": sha(manifest)}
    with pytest.raises(
        PublishError, match=r"dist/merged is not what this recipe's build published \(build old, not new\)"
    ):
        push_build(publish, tmp_path / "dist", recorded, "new", state, log=print)
    manifest.write_text(manifest.read_text().replace('"files": {}', '"files": {"x": "0"}'))
    with pytest.raises(PublishError, match=r"published \(build.json changed\)"):
        push_build(publish, tmp_path / "dist", recorded, "old", HashState(tmp_path / "state2.json"), log=print)


def test_dry_run_lists_files_and_lfs(example, tmp_path):
    recipe = push_recipe(tmp_path)
    proc = run_cli("push", str(recipe), "--dry-run", build=example["root"] / "build", dist=example["root"] / "dist")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("me/tiny-2x: from ")
    assert any(l.strip().startswith("model.safetensors.index.json") and l.endswith("regular") for l in lines)
    # (the shard count follows quantize.shard_size and the engine's compute dtype)
    assert any(re.match(r"model-00001-of-\d{5}\.safetensors", l.strip()) and l.endswith("lfs") for l in lines)


def test_a_wrong_token_is_one_line_saying_so_and_nothing_is_retried(example, hub, tmp_path):
    dist = tmp_path / "dist"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": "hf_not_a_valid_token_0123456789",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    proc = run_cli("build", str(push_recipe(tmp_path)), build=example["root"] / "build", dist=dist, env=env)
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: push: {dist / 'tiny-2x' / 'merged'} to me/tiny-2x: the Hub refused the token (HTTP 401); "
        "set HF_TOKEN or run `huggingface-cli login` with a valid token"
    ]
    assert "retrying" not in proc.stdout
