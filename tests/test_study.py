"""`frankenmoe study`: every gate mode built through the cache, compared side by
side, and the same study.json from two studies in separate folders."""

from __future__ import annotations

import json

import pytest

from frankenmoe.measure.sweep_report import render_study
from tests.conftest import EXAMPLE, example_data, page_data, run_cli, write_recipe

pytestmark = pytest.mark.slow


def study(root):
    proc = run_cli("study", str(EXAMPLE), "--tokens", "2048", build=root / "build", dist=root / "dist", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    out = root / "build" / "tiny-2x" / "study"
    return proc, out


def test_study_compares_every_mode_and_is_reproducible(fixture_models, tmp_path):
    proc, out = study(tmp_path / "a")
    data = json.loads((out / "study.json").read_text())
    assert data["modes"] == ["hidden", "cheap_embed", "random", "fitted"]
    for mode, row in data["results"].items():
        assert set(row["per_domain"]) == {"code", "prose"}
        assert row["per_domain"]["code"]["best_expert"] == "experts[0]"  # the code expert, on code
        assert 0 <= sum(row["expert_usage_entropy_bits"].values()) / 2 <= 1.0  # log2(2 experts)
        assert len(row["routing"]["code"]["mean_gate_weight"]) == 4  # layers
    hidden, fitted = data["results"]["hidden"], data["results"]["fitted"]
    # fitting lowers perplexity on both domains against mergekit's hidden-state routers
    for d in ("code", "prose"):
        assert fitted["per_domain"][d]["perplexity"] < hidden["per_domain"][d]["perplexity"]
    assert "| fitted |" in proc.stdout and (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "a" / "dist").exists()  # the variants never publish into dist/
    # The base's and experts' perplexities do not depend on the routers: computed once for all four modes.
    assert len(list((tmp_path / "a" / "build" / "tiny-2x" / "baseline").iterdir())) == 1
    assert all(row["keys"]["baseline"] == hidden["keys"]["baseline"] for row in data["results"].values())
    # Each mode's routing page, linked from study.md, shows that mode's routing as study.json has it.
    assert data["routing_pages"] == {m: f"routing/{m}.html" for m in data["modes"]}
    assert "[fitted](routing/fitted.html)" in (out / "study.md").read_text()
    for mode, rel in data["routing_pages"].items():
        page = page_data(out / rel)
        assert [m["label"] for m in page["models"]] == ["16-bit"]
        assert page["models"][0]["routing"] == data["results"][mode]["routing"], mode
    # The paired comparison: 2048 tokens a domain, every mode, expert and the base on the same windows.
    held = data["held_out"]
    assert held["tokens_per_domain_asked"] == 2048 and set(held["domains"]) == {"code", "prose"}
    for d, r in held["domains"].items():
        assert r["windows"] == 2048 // held["seq_len"] and r["tokens"] == 2048
        assert r["best_expert"] == data["results"]["hidden"]["per_domain"][d]["best_expert"]
        assert set(r["models"]) == {"experts[0]", "experts[1]", "base", *data["modes"]}
        assert r["models"][r["best_expert"]]["vs_best"] == {"value": 0.0, "ci95": [0.0, 0.0]}
        assert r["beats"], r  # the base against the modes at least, on this example
        for a, b in r["beats"]:  # a beats b: its paired distance is below b's on the same windows
            assert r["models"][a]["vs_best"]["value"] < r["models"][b]["vs_best"]["value"], (a, b)
    assert "| fitted | " in (out / "study.md").read_text().split("Paired, on more text")[1]
    assert "held-out NLLs" not in proc.stdout
    # study.md renders study.json as read back (its keys sorted), as a card does: the same text
    assert render_study(data) == (out / "study.md").read_text()
    card_carries_the_study(tmp_path / "a", out / "study.json", data)
    rerun, _ = study(tmp_path / "a")  # the same builds: the NLLs are read back, not measured again
    assert "held-out NLLs of 7 models read from" in rerun.stdout
    strip = lambda d: {k: v for k, v in d.items() if k != "wall_s"}  # noqa: E731
    assert strip(json.loads((out / "study.json").read_text())) == strip(data)
    _, again = study(tmp_path / "b")
    assert strip(json.loads((again / "study.json").read_text())) == strip(data)


def test_unknown_mode_is_a_usage_error(tmp_path):
    proc = run_cli("study", str(EXAMPLE), "--modes", "hidden,best", build=tmp_path / "build")
    assert proc.returncode == 2 and "--modes: unknown mode 'best'" in proc.stderr
    assert not (tmp_path / "build" / "tiny-2x").exists()


def test_modes_that_name_nothing_are_one_line(tmp_path):
    proc = run_cli("study", str(EXAMPLE), "--modes", ",", build=tmp_path / "build")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --modes: ',' names no mode; use some of hidden, cheap_embed, random, fitted"
    ]


def test_a_failed_mode_ends_the_study_with_the_error_its_run_reported(tmp_path):
    # `fitted` reads gates.files, which the other modes never do: only that mode fails.
    recipe = example_data()
    recipe["gates"]["files"] = ["no-such-text.txt"]
    path = write_recipe(tmp_path / "tiny-2x.yaml", recipe)
    proc = run_cli("study", str(path), "--modes", "fitted", build=tmp_path / "build")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: gates.files: {tmp_path / 'no-such-text.txt'}: file not found"]
    assert "| fitted |" not in proc.stdout and not (tmp_path / "build" / "tiny-2x" / "study" / "study.json").exists()


def test_a_mode_named_twice_is_studied_once():
    from frankenmoe.experiments.study import parse_modes

    assert parse_modes("hidden,hidden, random") == ["hidden", "random"]


def card_carries_the_study(root, study_json, data):
    """`card.study` puts the study's table into both cards and names this build's row;
    a study of another recipe is refused before anything runs."""
    recipe = example_data()
    recipe["card"]["study"] = str(study_json)
    path = write_recipe(root / "tiny-2x.yaml", recipe)
    proc = run_cli("build", str(path), "--until", "card", build=root / "build", dist=root / "dist")
    assert proc.returncode == 0, proc.stderr
    for folder in ("merged", "awq"):
        card = (root / "dist" / "tiny-2x" / folder / "README.md").read_text()
        assert "### Routing study: tiny-2x" in card and "| fitted |" in card, folder
        assert "This model's routers are the `hidden` row." in card, folder
    study_json.write_text(json.dumps({**data, "recipe": "someone-else"}))
    proc = run_cli("build", str(path), build=root / "build", dist=root / "dist")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: card.study: ") and "'someone-else'" in proc.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found; run `frankenmoe study` on this recipe first"),
        ("{not json", "is not a readable study.json"),
        ('{"recipe": "tiny-2x", "results": {}}', "is not a study.json written by `frankenmoe study`"),
        ('{"recipe": "other", "results": {"hidden": {}}}', "is the study of 'other', not of 'tiny-2x'"),
    ],
)
def test_a_study_the_card_cannot_use_is_one_line(tmp_path, content, message):
    from frankenmoe.errors import InputFileError
    from frankenmoe.measure.sweep_report import read_study

    path = tmp_path / "study.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputFileError, match="^card.study: ") as e:
        read_study(path, "tiny-2x", "card.study")
    assert message in str(e.value) and "\n" not in str(e.value)
