"""A push killed in the middle of an upload leaves the remote as it was; the rerun completes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import HUB_TOKEN, REPO
from tests.test_push import push, push_recipe, sha

pytestmark = pytest.mark.slow


def test_push_killed_mid_upload_commits_nothing_and_the_rerun_completes(example, hub, tmp_path):
    from huggingface_hub import snapshot_download

    dist = tmp_path / "dist"
    recipe = push_recipe(tmp_path)
    hub.stall(60, path_contains="/_standin/lfs/")  # the first LFS upload hangs
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": HUB_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "FRANKENMOE_NO_PROGRESS": "1",
        "FRANKENMOE_BUILD_DIR": str(example["root"] / "build"),
        "FRANKENMOE_DIST_DIR": str(dist),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "frankenmoe.cli", "build", str(recipe)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while hub.count("/_standin/lfs/", "PUT") == 0:
        assert proc.poll() is None and time.monotonic() < deadline, "the push never started uploading"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert hub.commits("me/tiny-2x") == [] and hub.commits("me/tiny-2x-AWQ") == [], "the remote changed"
    rerun = push(example, hub, recipe, dist)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for folder, repo in (("merged", "me/tiny-2x"), ("awq", "me/tiny-2x-AWQ")):
        assert len(hub.commits(repo)) == 1
        got = Path(snapshot_download(repo, endpoint=hub.url, token=HUB_TOKEN, cache_dir=tmp_path / "dl"))
        local = dist / "tiny-2x" / folder
        assert {p.name: sha(p) for p in got.iterdir() if p.is_file() and p.name != ".gitattributes"} == {
            p.name: sha(p) for p in local.iterdir() if p.is_file()
        }
