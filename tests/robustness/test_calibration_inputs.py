"""Calibration and evaluation text, through the real CLI: bad files stop the build
before any stage runs; too little text stops it before the quantization engine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import example_data, run_cli


def recipe_with(tmp_path: Path, **calibration) -> Path:
    data = example_data()
    data["name"] = "tiny-2x"
    data["quantize"]["calibration"].update(calibration)
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "quantize.calibration.files: {f}: file not found"),
        (b"", "quantize.calibration.files: {f}: no text in file"),
        (b'{"text": "  "}\n', "quantize.calibration.files: {f}: no text in file"),
        ("café".encode("latin-1"), "quantize.calibration.files: {f}: not UTF-8 text (byte 3); convert it to UTF-8"),
        (b'{"txt": "hello"}\n', 'quantize.calibration.files: {f}:1: expected a JSON object with a "text" field'),
        (b'{"text": "fine"}\n{"text": null}\n', 'quantize.calibration.files: {f}:2: "text" is NoneType, not a string'),
        ("folder", "quantize.calibration.files: {f}: a folder, not a text file; name the .jsonl or .txt files in it"),
    ],
)
def test_bad_calibration_file_stops_the_build_before_anything_runs(tmp_path, content, expected):
    f = tmp_path / "cal.jsonl"
    if content == "folder":
        f.mkdir()
    elif content is not None:
        f.write_bytes(content)
    proc = run_cli(
        "build", str(recipe_with(tmp_path, files=[str(f)])), build=tmp_path / "build", dist=tmp_path / "dist"
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip() == "error: " + expected.format(f=f)
    assert not (tmp_path / "build").exists() and not (tmp_path / "dist").exists()


@pytest.mark.slow
def test_too_little_text_says_how_much_before_the_engine_starts(example, tmp_path):
    build = tmp_path / "build"
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(build)], check=True)
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n" * 40)
    proc = run_cli("build", str(recipe_with(tmp_path, files=[str(short)])), build=build, dist=tmp_path / "dist")
    assert proc.returncode == 4, proc.stderr
    assert "merge     cached" in proc.stdout
    assert proc.stderr.strip().startswith("error: quantize.calibration: ")
    assert "8 needed (2048 tokens); add text or lower samples/seq_len" in proc.stderr
    assert "quantize  calibration:" not in proc.stdout  # printed once the windows exist, just before the engine


@pytest.mark.slow
def test_held_out_text_too_short_for_one_window_is_one_line(example, tmp_path):
    """verify.seq_len longer than the held-out text: the first stage that cuts it
    into windows (baseline) says so in one line, instead of a torch traceback."""
    build = tmp_path / "build"
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(build)], check=True)
    data = example_data()
    data["name"] = "tiny-2x"
    data["verify"]["seq_len"] = 100_000
    recipe = tmp_path / "long.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(recipe), build=build, dist=tmp_path / "dist")
    assert proc.returncode == 4, proc.stderr
    assert "quantize  cached" in proc.stdout and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: verify.files: no evaluation window of 100001 tokens in ")
    assert proc.stderr.strip().endswith("give more text or a smaller verify.seq_len")


@pytest.mark.parametrize("section", ["merge", "gates"])
def test_cuda_without_a_gpu_is_one_line_naming_the_key(tmp_path, section):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = example_data()
    data[section] = {**data.get(section, {}), "device": "cuda", **({"fit": True} if section == "gates" else {})}
    recipe = tmp_path / "cuda.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 5, proc.stderr
    assert (
        proc.stderr.strip()
        == f"error: {section}.device: cuda, but torch finds no usable GPU on this machine; set it to auto or cpu"
    )
    assert not (tmp_path / "build").exists()
