"""The Hub stand-in against the real huggingface_hub client: LFS upload, skip of unchanged files, downloads,
failure injection and auth. These tests also pin down which client calls retry by themselves."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from safetensors.numpy import save_file

from tests.conftest import HUB_TOKEN as TOKEN

REPO = "me/tiny"
STANDIN = Path(__file__).with_name("hub_standin.py")
# huggingface_hub's own LFS PUT passes `data=<file>` to httpx2, which warns; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture(autouse=True)
def lfs_client(monkeypatch):
    """Make the client upload through Git LFS, the stand-in having no Xet storage.

    huggingface_hub 2.4 uses Xet whenever hf_xet is importable unless HF_HUB_DISABLE_XET is set, and reads that
    variable into `constants` when first imported (earlier test modules already import it), so the cached value
    is set alongside the environment variable.
    """
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def api(hub) -> HfApi:
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(REPO, private=True, exist_ok=True)
    return api


@pytest.fixture
def folder(tmp_path) -> Path:
    """A model folder: JSON config, a card with metadata, and safetensors weights."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"hidden_size": 8, "num_local_experts": 2}))
    (path / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- moe\n---\n# tiny\n")
    save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8)}, str(path / "model.safetensors"))
    return path


def upload(api: HfApi, folder: Path, message: str = "push"):
    return api.upload_folder(repo_id=REPO, folder_path=folder, commit_message=message, revision="main")


def test_upload_goes_through_lfs_and_downloads_byte_identical(hub, api, folder, tmp_path):
    info = upload(api, folder)
    assert hub.count("/info/lfs/objects/batch", "POST") == 1 and hub.count("/_standin/lfs/", "PUT") == 1
    commits = hub.commits(REPO)
    assert len(commits) == 1 and commits[0]["sha"] == info.oid and commits[0]["message"] == "push"
    assert {p: f["lfs"] for p, f in commits[0]["files"].items()} == {
        "README.md": False,
        "config.json": False,
        "model.safetensors": True,
    }

    model = api.model_info(REPO, revision="main")
    assert model.sha == info.oid and model.private
    assert api.list_repo_files(REPO) == ["README.md", "config.json", "model.safetensors"]
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == [info.oid]
    assert api.list_repo_refs(REPO).branches[0].target_commit == info.oid
    assert api.whoami()["name"] == "standin-user"

    got = Path(snapshot_download(REPO, revision="main", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "dl"))
    assert {p.name: p.read_bytes() for p in got.iterdir()} == {p.name: p.read_bytes() for p in folder.iterdir()}
    only_json = Path(
        snapshot_download(
            REPO, revision=info.oid, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "dl2", allow_patterns="*.json"
        )
    )
    assert [p.name for p in only_json.iterdir()] == ["config.json"]
    weights = hf_hub_download(
        REPO, "model.safetensors", revision=info.oid, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "dl3"
    )
    assert Path(weights).read_bytes() == (folder / "model.safetensors").read_bytes()

    stored = [f for f in (tmp_path / "hub").rglob("*") if f.is_file()]
    assert stored and not any(TOKEN.encode() in f.read_bytes() for f in stored)


def test_unchanged_folder_makes_no_commit_and_one_change_makes_one(hub, api, folder):
    first = upload(api, folder, "first")
    again = upload(api, folder, "again")
    assert again.oid == first.oid and len(hub.commits(REPO)) == 1
    assert hub.count("/commit/", "POST") == 1 and hub.count("/_standin/lfs/", "PUT") == 1

    (folder / "config.json").write_text(json.dumps({"hidden_size": 16, "num_local_experts": 2}))
    upload(api, folder, "second")
    commits = hub.commits(REPO)
    assert [c["message"] for c in commits] == ["first", "second"]
    assert commits[0]["files"]["model.safetensors"] == commits[1]["files"]["model.safetensors"]
    assert commits[0]["files"]["config.json"] != commits[1]["files"]["config.json"]
    assert hub.count("/_standin/lfs/", "PUT") == 1  # the unchanged weights are not sent again


def test_5xx_on_commit_is_not_retried_and_commits_nothing(hub, api, folder):
    """The LFS-path commit POST has no retry in huggingface_hub 2.4: the caller must retry."""
    hub.fail(500, path_contains="/commit/")
    with pytest.raises(HfHubHTTPError) as error:
        upload(api, folder)
    assert error.value.response.status_code == 500
    assert hub.count("/commit/", "POST") == 1 and hub.commits(REPO) == []

    upload(api, folder)  # a rerun commits, and finds the LFS object already uploaded
    assert len(hub.commits(REPO)) == 1 and hub.count("/_standin/lfs/", "PUT") == 1


def test_preupload_and_lfs_batch_errors_are_retried_by_the_client(hub, api, folder):
    hub.fail(503, path_contains="/preupload/")
    hub.fail(429, path_contains="/info/lfs/objects/batch")
    upload(api, folder)
    assert hub.count("/preupload/", "POST") == 2 and hub.count("/info/lfs/objects/batch", "POST") == 2
    assert len(hub.commits(REPO)) == 1


def test_dropped_lfs_upload_is_retried_and_stored_intact(hub, api, folder):
    hub.fail(drop=True, path_contains="/_standin/lfs/")
    upload(api, folder)
    assert hub.count("/_standin/lfs/", "PUT") == 2
    assert (
        hub.commits(REPO)[0]["files"]["model.safetensors"]["sha256"]
        == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    )


def test_dropped_commit_surfaces_as_a_connection_error_and_commits_nothing(hub, api, folder):
    hub.fail(drop=True, path_contains="/commit/")
    with pytest.raises(httpx2.TransportError):
        upload(api, folder)
    assert hub.commits(REPO) == []


def test_writes_need_a_token_and_private_reads_too(hub, api, folder):
    anonymous, wrong = HfApi(endpoint=hub.url, token=False), HfApi(endpoint=hub.url, token="hf_wrong")
    for attempt in (
        lambda: anonymous.create_repo("me/other"),
        lambda: wrong.create_repo("me/other"),
        lambda: anonymous.upload_folder(repo_id=REPO, folder_path=folder),
    ):
        with pytest.raises(HfHubHTTPError) as error:
            attempt()
        assert error.value.response.status_code == 401
    request = urllib.request.Request(
        f"{hub.url}/api/models/{REPO}/commit/main",
        method="POST",
        data=b'{"key": "header", "value": {"summary": "x"}}\n',
    )
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request)
    assert raw.value.code == 401
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(REPO)
    assert hub.commits(REPO) == [] and hub.count("/commit/", "POST") == 1


def test_invalid_readme_metadata_is_refused_before_upload(hub, api, folder):
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nnot yaml at all\n---\n# tiny\n")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        upload(api, folder)
    assert hub.count("/preupload/") == 0


def test_runs_as_a_script(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(STANDIN), "--port", "0", "--root", str(tmp_path), "--token", TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert HfApi(endpoint=url, token=TOKEN).whoami()["name"] == "standin-user"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
