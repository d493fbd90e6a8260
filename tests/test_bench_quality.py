"""bench/quality.py's paired comparison of two 4-bit folders: a folder against
itself differs by nothing; the 16-bit model against its 4-bit one differs by the
4-bit model's whole loss, with an interval that excludes zero."""

from __future__ import annotations

import pytest

from bench.quality import paired_difference

pytestmark = pytest.mark.slow


def test_paired_difference_is_zero_for_the_same_folder_and_not_for_another(example):
    reference = next((example["root"] / "build" / "tiny-2x" / "evaluate").glob("*/reference.safetensors"))
    same = paired_difference(reference, example["awq"], example["awq"], resamples=500)
    assert same["kl_mean"]["difference"] == 0 and same["kl_mean"]["ci95"] == [0, 0]
    assert same["top1_agreement"]["difference"] == 0

    other = paired_difference(reference, example["awq"], example["merged"], resamples=500)
    assert other["kl_mean"]["b"] < 1e-6  # the 16-bit model is its own reference
    assert other["kl_mean"]["difference"] == pytest.approx(other["kl_mean"]["a"])
    assert 0 < other["kl_mean"]["ci95"][0] <= other["kl_mean"]["difference"] <= other["kl_mean"]["ci95"][1]
    assert other["top1_agreement"]["difference"] < 0


def _draw(fast: tuple[float, float, float], own: tuple[float, float, float]) -> dict:
    keys = ("kl_mean", "top1_agreement", "perplexity_ratio")
    return {
        "speedup": 3.0,
        "paths": {"fast": dict(zip(keys, fast)), "gptqmodel_fp16": dict(zip(keys, own))},
    }


def test_the_draws_count_where_the_fast_path_is_as_good_each_figure_its_own_way():
    """Lower is better for KL and the perplexity ratio, higher for top-1."""
    from bench.report import draws_lines

    lines = draws_lines(
        _draw((0.08, 0.86, 1.08), (0.07, 0.87, 1.09)),
        {"1": _draw((0.06, 0.88, 1.10), (0.07, 0.87, 1.09)), "2": _draw((0.07, 0.875, 1.09), (0.07, 0.87, 1.09))},
    )
    text = "\n".join(lines)
    assert "over 3 calibration draws" in text
    assert "| 1 | 3.0x | 0.0600 / 0.0700 | 88.0% / 87.0% | 1.100 / 1.090 |" in text
    means = [line for line in lines if "mean over the draws" in line]
    assert [line.split(",")[0] for line in means] == ["- mean KL", "- top-1", "- perplexity ratio"]
    assert "fast 0.0700, float16 0.0700" in means[0] and "fast 87.2%, float16 87.0%" in means[1]
    assert all(line.endswith("as good or better in 2 of 3") for line in means)
