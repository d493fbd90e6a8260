"""Reproducible builds: the lock file, `build --locked`, build.json, rebuild-check.

The fast tests use tiny random models and copies of the shipped text in a
temporary project; the slow ones read the example build (conftest's `example`).
"""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE, REPO, read_json, run_cli, tiny_mistral


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with three tiny models, text files and a recipe with relative paths."""
    root = tmp_path_factory.mktemp("project")
    tiny_mistral(root / "models" / "base", seed=0)
    tiny_mistral(root / "models" / "a", seed=1)
    tiny_mistral(root / "models" / "b", seed=2)
    for domain in ("code", "prose"):
        (root / "text" / domain).mkdir(parents=True)
        for part in ("calibration", "eval"):
            shutil.copy(REPO / "calibration" / domain / f"{part}.jsonl", root / "text" / domain / f"{part}.jsonl")
    recipe = {
        "base_model": "models/base",
        "experts": [
            {"source_model": "models/a", "positive_prompts": ["def f(x):"]},
            {"source_model": "models/b", "positive_prompts": ["The rules of the language"]},
        ],
        "quantize": {"calibration": {"files": ["text/code/calibration.jsonl", "text/prose/calibration.jsonl"]}},
        "verify": {"files": ["text/code/eval.jsonl", "text/prose/eval.jsonl"]},
        "card": {"license": "mit"},
        "gguf": {"enabled": False},  # models without a tokenizer: llama.cpp's converter cannot take them
    }
    (root / "small.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return root


@pytest.fixture
def locked(project) -> Path:
    proc = run_cli("lock", "small.yaml", cwd=project, build=project / "build")
    assert proc.returncode == 0, proc.stderr
    assert "wrote small.lock.json" in proc.stdout
    return project / "small.lock.json"


def test_lock_pins_models_data_versions_and_platform(project, locked):
    lock = read_json(locked)
    pins = lock["stages"]  # each stage's fingerprint, by stage: nothing listed by hand
    assert pins["resolve"]["base"]["commit"] is None
    assert set(pins["resolve"]["experts[1]"]["files"]) >= {"config.json", "model.safetensors"}
    assert [name for name, _ in pins["quantize"]["calibration"]["files"]] == [
        "text/code/calibration.jsonl",
        "text/prose/calibration.jsonl",
    ]
    assert [name for name, _ in pins["baseline"]["eval"]["files"]] == ["text/code/eval.jsonl", "text/prose/eval.jsonl"]
    assert set(pins["card"]) == {"template"} and "gates" not in pins  # the routers are not fitted: no text
    assert {
        "torch",
        "transformers",
        "mergekit",
        "gptqmodel",
        "safetensors",
        "huggingface-hub",
        "numpy",
        "jinja2",
        "matplotlib",
        "datasets",
    } <= set(lock["packages"])
    assert lock["seeds"] == {"merge.seed": 0, "quantize.calibration.seed": 0} and lock["threads"] == 2
    assert lock["platform"]["cpu_capability"]
    # where mergekit computes hidden-state router rows and AWQ its scales (no GPU here)
    assert pins["merge"]["compute"]["device"] == pins["quantize"]["compute"]["device"] == "cpu"
    assert str(project) not in locked.read_text()  # a lock is the same in every clone
    check = run_cli("lock", "small.yaml", "--check", cwd=project, build=project / "build")
    assert check.returncode == 0 and "up to date" in check.stdout


def test_locked_build_refuses_a_calibration_file_changed_by_one_byte(project, locked):
    cal = project / "text" / "prose" / "calibration.jsonl"
    original = cal.read_bytes()
    try:
        at = original.index(b"the") + 2  # one byte of the text itself, so the file is still valid JSON Lines
        cal.write_bytes(original[:at] + b"f" + original[at + 1 :])
        build = project / "build-refused"
        proc = run_cli("build", "small.yaml", "--locked", cwd=project, build=build, dist=project / "dist-refused")
        assert proc.returncode == 8, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[0].startswith(
            "error: lock mismatch: stages / quantize / calibration / files / text/prose/calibration.jsonl: "
            "the lock has sha256"
        )
        assert len(lines) == 2 and "frankenmoe lock" in lines[1] and "Traceback" not in proc.stderr
        assert not build.exists() and not (project / "dist-refused").exists()
        check = run_cli("lock", "small.yaml", "--check", cwd=project, build=project / "build")
        assert check.returncode == 8 and "text/prose/calibration.jsonl" in check.stderr
    finally:
        cal.write_bytes(original)


def test_locked_build_names_a_package_and_a_model_file_that_differ(project, locked):
    lock = read_json(locked)
    lock["packages"]["torch"] = "2.0.0"
    lock["stages"]["resolve"]["experts[0]"]["files"]["model.safetensors"] = "0" * 64
    lock["platform"]["cpu_capability"] = "NEON"
    edited = project / "edited.lock.json"
    edited.write_text(json.dumps(lock))
    proc = run_cli("build", "small.yaml", "--lock", str(edited), cwd=project, build=project / "b2", dist=project / "d2")
    assert proc.returncode == 8
    assert 'lock mismatch: packages / torch: the lock has "2.0.0", now "2.14.1"' in proc.stderr
    assert (
        "lock mismatch: stages / resolve / experts[0] / files / model.safetensors: the lock has sha256 000000000000"
        in proc.stderr
    )
    assert 'lock mismatch: platform / cpu_capability: the lock has "NEON"' in proc.stderr


def test_locked_build_without_a_lock_file_says_how_to_make_one(project):
    proc = run_cli("build", "small.yaml", "--lock", "missing.lock.json", cwd=project, build=project / "b3")
    assert proc.returncode == 8
    assert (
        proc.stderr.strip() == "error: missing.lock.json: lock file not found; write it with `frankenmoe lock RECIPE`"
    )


def example_lock_now(monkeypatch) -> dict:
    from frankenmoe.recipe import load_recipe
    from frankenmoe.stages import STAGES
    from frankenmoe.stages.base import lock_now
    from frankenmoe.support.hashing import HashState

    monkeypatch.chdir(REPO)  # the example's paths are relative to the project
    return lock_now(STAGES, load_recipe(EXAMPLE), HashState(Path("/nonexistent/state.json")))


def test_committed_example_lock_matches_the_example_inputs(fixture_models, monkeypatch):
    """recipes/tiny-2x.lock.json must be refreshed whenever the example's inputs change."""
    from frankenmoe.provenance.lockfile import differences, read_lock

    committed = read_lock(REPO / "recipes" / "tiny-2x.lock.json")
    now = example_lock_now(monkeypatch)
    if committed["platform"] != now["platform"]:
        pytest.skip(f"the example was locked on {committed['platform']}; this machine is {now['platform']}")
    assert differences(committed, now) == []


@pytest.mark.slow
def test_published_folders_carry_build_json(example, monkeypatch):
    card = (example["awq"] / "README.md").read_text()
    for folder in ("merged", "awq"):
        manifest = read_json(example[folder] / "build.json")
        assert manifest["folder"] == folder and manifest["recipe"]["name"] == "tiny-2x"
        assert manifest["build_id"] in card
        others = {k: v for k, v in file_hashes_deep(example[folder]).items() if k != "build.json"}
        assert manifest["files"] == others
        assert set(manifest["stages"]) == {
            "lock",
            "resolve",
            "merge",
            "gates",
            "quantize",
            "baseline",
            "evaluate",
            "verify",
            "w4a16",
            "card",
        }
        assert all(len(s["key"]) == 16 and "wall_s" not in s for s in manifest["stages"].values())
    # The embedded lock is what `frankenmoe lock` writes for the recipe.
    assert read_json(example["awq"] / "build.json")["lock"] == example_lock_now(monkeypatch)


def file_hashes_deep(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_no_machine_paths_or_names_in_published_files(example):
    needles = {str(REPO), str(example["root"]), str(Path.home()) + "/", "/tmp/"}
    host, user = socket.gethostname(), getpass.getuser()
    for name in (host, user):
        if len(name) >= 6:  # shorter ones ("vm", "root") occur by chance in weights and vocabularies
            needles.add(name)
    for folder in (example["merged"], example["awq"]):
        for f in folder.rglob("*"):
            data = f.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle!r} in {f}"


def copy_of_project(dst: Path) -> Path:
    """The project's files at another absolute path (fixture models hard-linked)."""
    shutil.copytree(
        REPO,
        dst,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "fixtures", "__pycache__", ".pytest_cache", "*.egg-info"
        ),
    )
    subprocess.run(["cp", "-al", str(REPO / "fixtures"), str(dst / "fixtures")], check=True)
    return dst


@pytest.mark.slow
def test_rebuild_check_from_another_path_matches_and_names_a_changed_file(example, tmp_path):
    """One fresh rebuild, run from a copy of the project at another absolute path,
    proves three things: every published file is path-independent (both folders
    equal the example's), an untouched file passes rebuild-check, and one changed
    byte is found and blamed on the stage that made the file."""
    downloaded = tmp_path / "downloaded"
    shutil.copytree(example["awq"], downloaded)
    readme = downloaded / "README.md"
    readme.write_text(readme.read_text() + " ")
    (downloaded / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # as the Hub adds
    elsewhere = copy_of_project(tmp_path / "another" / "place" / "frankenmoe")
    work = tmp_path / "work"
    proc = run_cli("rebuild-check", str(downloaded), "--work", str(work), "--recipe-dir", "recipes", cwd=elsewhere)
    assert proc.returncode == 9, proc.stderr
    rows = {
        line.split()[0]: line.split()
        for line in proc.stdout.splitlines()
        if line.split()[-1:] in (["same"], ["DIFFERENT"])
    }
    assert rows.pop("README.md")[-1] == "DIFFERENT"
    assert rows and all(r[-1] == "same" for r in rows.values()), proc.stdout
    assert rows["build.json"][1] == "manifest" and rows["model.safetensors.index.json"][1] == "quantize"
    assert "error: rebuild-check: README.md (made by card) differs" in proc.stderr
    assert "not part of the build (ignored): .gitattributes" in proc.stdout
    for folder in ("merged", "awq"):
        assert file_hashes_deep(work / "dist" / "tiny-2x" / folder) == file_hashes_deep(example[folder]), folder


def test_the_lock_pins_exactly_the_packages_and_inputs_the_stages_declare(fixture_models, monkeypatch):
    """One declaration: a stage's `packages` and `fingerprint` (both part of its key) are
    what the lock pins; what a new stage declares is pinned with no list to edit elsewhere."""
    from frankenmoe import stages
    from frankenmoe.recipe import load_recipe
    from frankenmoe.stages.base import Stage
    from frankenmoe.support.hashing import HashState

    class Extra(Stage):
        name = "extra"
        packages = ("pyyaml",)

        def fingerprint(self, recipe, state, inputs, offline=False):
            return {"table": "sha256 of a file it reads"}

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(stages, "STAGES", (*stages.STAGES, Extra()))
    recipe, state = load_recipe(EXAMPLE), HashState(Path("/nonexistent/state.json"))
    lock = stages.LockStage().fingerprint(recipe, state, {})
    declared = {p for s in stages.STAGES for p in s.packages}
    assert set(lock["packages"]) == declared | {"frankenmoe"}
    assert "pyyaml" in lock["packages"] and "lm_eval" in lock["packages"]
    assert lock["stages"]["extra"] == {"table": "sha256 of a file it reads"}
    enabled = [s for s in stages.STAGES if s.enabled(recipe) and not s.pins_the_build]
    assert lock["stages"] == {s.name: f for s in enabled if (f := s.fingerprint(recipe, state, {}))}
    assert "lock" not in lock["stages"] and "gguf" not in lock["stages"]  # gguf.enabled: false here


def test_published_recipe_writes_every_path_field_portably(tmp_path):
    """Each recipe field typed RecipePath (models, text files, task folder, card template)
    is found by its type, not by a list: none leaves an absolute path in published files."""
    from frankenmoe.provenance.lockfile import published_recipe
    from frankenmoe.recipe import load_recipe

    data = yaml.safe_load(EXAMPLE.read_text())
    data["base_model"] = str(tmp_path / "models" / "base")
    for i, expert in enumerate(data["experts"]):
        expert["source_model"] = {"path": str(tmp_path / "models" / f"expert{i}")}
    data["verify"]["files"] = [str(tmp_path / "text" / "eval.jsonl"), "shipped:prose/eval.jsonl"]
    data["quantize"]["calibration"]["files"] = [str(tmp_path / "text" / "cal.jsonl")]
    data["gates"] = {**data.get("gates", {}), "files": [str(tmp_path / "text" / "fit.jsonl")]}
    data["card"] = {"template": str(tmp_path / "card.md")}
    data["evals"] = {"include": str(tmp_path / "tasks")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))

    published = json.dumps(published_recipe(load_recipe(tmp_path / "r.yaml")))
    assert str(tmp_path) not in published
    for name in ('"base"', '"expert1"', '"eval.jsonl"', '"cal.jsonl"', '"fit.jsonl"', '"card.md"', '"tasks"'):
        assert name in published
