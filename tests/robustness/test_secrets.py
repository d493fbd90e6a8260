"""The Hub token never appears in any output, record or error, tracebacks included."""

from __future__ import annotations

import pytest

from pipeline import cli
from tests.conftest import HUB_TOKEN


def test_internal_error_traceback_is_scrubbed(monkeypatch, capsys):
    """A bug whose exception message carries the token (say, a URL or header a
    library put into it): the traceback is printed for the report, the token is not."""
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)

    def broken(args):
        raise RuntimeError(f"GET https://hub/api?token={HUB_TOKEN} failed")

    monkeypatch.setattr(cli, "cmd_validate", broken)
    assert cli.main(["validate", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: GET https://hub/api?token=*** failed" in err
    assert HUB_TOKEN not in err
    assert err.strip().splitlines()[-1].startswith("error: internal error")


def test_user_errors_are_scrubbed_too(monkeypatch, capsys):
    from pipeline.errors import PublishError

    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", HUB_TOKEN)

    def refused(args):
        raise PublishError(f"push: rejected token {HUB_TOKEN}")

    monkeypatch.setattr(cli, "cmd_validate", refused)
    assert cli.main(["validate", "x.yaml"]) == 7
    assert capsys.readouterr().err == "error: push: rejected token ***\n"


@pytest.mark.slow
def test_token_is_in_no_file_or_output_of_a_push_that_fails(example, hub, tmp_path):
    """End to end: a push that fails for good, with a recognizable token; every
    file under build/ and dist/ and everything printed is scanned."""
    from tests.test_push import assert_token_nowhere, push, push_recipe

    hub.fail(403, times=1000, path_contains="/preupload/")
    proc = push(example, hub, push_recipe(tmp_path), tmp_path / "dist")
    assert proc.returncode != 0
    assert_token_nowhere(example["root"] / "build", tmp_path / "dist", texts=[proc.stdout, proc.stderr])
