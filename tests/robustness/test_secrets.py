"""The Hub token never appears in any output, record or error, tracebacks included."""

from __future__ import annotations

import pytest

from frankenmoe import cli
from frankenmoe.cli import arguments  # the parser takes each command from here
from tests.conftest import HUB_TOKEN


def test_internal_error_traceback_is_scrubbed(monkeypatch, capsys, tmp_path):
    """A bug whose exception message carries the token (say, a URL or header a
    library put into it): one line says it is a bug and names the log with the
    traceback for the report; neither holds the token."""
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setenv("FRANKENMOE_BUILD_DIR", str(tmp_path / "build"))

    def broken(args):
        raise RuntimeError(f"GET https://hub/api?token={HUB_TOKEN} failed")

    monkeypatch.setattr(arguments, "cmd_validate", broken)
    assert cli.main(["validate", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: internal error")
    assert "please report it" in err and HUB_TOKEN not in err
    (log,) = (tmp_path / "build" / "logs").glob("internal-error-*.log")
    assert str(log) in err
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: GET https://hub/api?token=*** failed" in text
    assert HUB_TOKEN not in text


def test_an_unexpected_os_error_is_a_bug_not_a_bad_path(monkeypatch, capsys, tmp_path):
    """A missing file inside the code's own work is not the user's path: exit 1, not 5."""
    monkeypatch.setenv("FRANKENMOE_BUILD_DIR", str(tmp_path / "build"))

    def broken(args):
        open(tmp_path / "the-code-expected-this-file")

    monkeypatch.setattr(arguments, "cmd_validate", broken)
    assert cli.main(["validate", "x.yaml"]) == 1
    assert capsys.readouterr().err.startswith("error: internal error (FileNotFoundError")


def test_user_errors_are_scrubbed_too(monkeypatch, capsys):
    from frankenmoe.errors import PublishError

    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", HUB_TOKEN)

    def refused(args):
        raise PublishError(f"push: rejected token {HUB_TOKEN}")

    monkeypatch.setattr(arguments, "cmd_validate", refused)
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
