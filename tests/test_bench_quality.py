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
