"""The AWQ engine's compute path (device and dtype), its overrides, its progress
lines and its GPTQModel patches: fast, no model and no GPTQModel run (the patch
tests import GPTQModel, a few seconds, and use small random tensors)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from frankenmoe.errors import FrankenmoeError
from frankenmoe.quantization import awq_engine, gptqmodel_patches
from frankenmoe.quantization.awq_engine import (
    DTYPE_ENV,
    PROGRESS_FD_ENV,
    LayerProgress,
    compute_path,
    progress_line,
    run_engine,
)
from frankenmoe.support import device

SAPPHIRE_RAPIDS = textwrap.dedent("""\
    processor\t: 0
    vendor_id\t: GenuineIntel
    model name\t: Intel(R) Xeon(R) Platinum 8480+
    flags\t\t: fpu vme sse4_2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
    bugs\t\t: spectre_v1

    processor\t: 1
    flags\t\t: fpu vme sse4_2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
    """)
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE_X = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512bw\n"
HASWELL = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
GRAVITON2 = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
# A flag name must match whole: "avx512f" inside another word is not the flag.
LOOKALIKE = "processor\t: 0\nflags\t\t: fpu avx2 xavx512f avx512fx\n"


@pytest.mark.parametrize(
    "cpuinfo, dtype, isa",
    [
        (SAPPHIRE_RAPIDS, "float32", "avx512"),
        (ZEN4, "float32", "avx512"),
        (SKYLAKE_X, "float32", "avx512"),
        (HASWELL, "float32", "avx2"),
        (GRAVITON2, "float32", "asimd"),
        (LOOKALIKE, "float32", "avx2"),
        ("", "float32", "unknown"),
    ],
)
def test_a_cpu_computes_in_float32_and_names_its_vector_extension(cpuinfo, dtype, isa):
    assert compute_path(environ={}, cpuinfo=cpuinfo, gpu=None) == {"device": "cpu", "dtype": dtype, "isa": isa}


def test_a_gpu_keeps_gptqmodels_float16_path_and_names_the_card():
    path = compute_path(environ={}, cpuinfo=SAPPHIRE_RAPIDS, gpu=((9, 0), "NVIDIA H200"))
    assert path == {"device": "cuda", "dtype": "float16", "capability": "sm_90 NVIDIA H200"}


def test_detection_asks_torch_for_a_gpu_and_reads_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(device, "cuda_device", lambda: ((8, 6), "NVIDIA RTX A6000"))
    assert compute_path(environ={})["capability"] == "sm_86 NVIDIA RTX A6000"
    monkeypatch.setattr(device, "cuda_device", lambda: None)
    monkeypatch.setattr(device, "read_cpuinfo", lambda: ZEN4)
    assert compute_path(environ={}) == {"device": "cpu", "dtype": "float32", "isa": "avx512"}


def test_the_path_is_stable_and_carries_no_timings_or_host_names(monkeypatch):
    import socket

    monkeypatch.setattr(device, "cuda_device", lambda: None)
    first = compute_path(environ={})
    assert first == compute_path(environ={})
    assert socket.gethostname() not in json.dumps(first)
    assert set(first) <= {"device", "dtype", "isa", "capability", "dtype_from"}


@pytest.mark.parametrize("value", ["float16", "bfloat16", "float32"])
def test_the_environment_overrides_the_dtype_and_says_so(value):
    for cpuinfo, gpu in ((HASWELL, None), (SAPPHIRE_RAPIDS, None), ("", ((9, 0), "NVIDIA H200"))):
        path = compute_path(environ={DTYPE_ENV: value}, cpuinfo=cpuinfo, gpu=gpu)
        assert path["dtype"] == value and path["dtype_from"] == DTYPE_ENV


def test_an_empty_override_is_no_override_and_a_wrong_one_is_refused():
    assert "dtype_from" not in compute_path(environ={DTYPE_ENV: ""}, cpuinfo=HASWELL, gpu=None)
    with pytest.raises(FrankenmoeError, match="FRANKENMOE_AWQ_DTYPE.*'fp16'.*float16, bfloat16, float32"):
        compute_path(environ={DTYPE_ENV: "fp16"}, cpuinfo=HASWELL, gpu=None)


def test_the_engine_takes_the_dtype_from_the_spec_before_the_machine(tmp_path, monkeypatch):
    """main() reads spec["compute_dtype"]; only without it does it ask compute_path()."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_seed(seed):
        raise Stop

    import frankenmoe.support.determinism

    monkeypatch.setattr(frankenmoe.support.determinism, "seed_everything", fake_seed)
    monkeypatch.setattr(awq_engine, "compute_path", lambda: seen.setdefault("asked", {"dtype": "float32"}))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"seed": 0, "compute_dtype": "bfloat16"}))
    with pytest.raises(Stop):
        awq_engine.main(str(spec))
    assert "asked" not in seen
    spec.write_text(json.dumps({"seed": 0}))
    with pytest.raises(Stop):
        awq_engine.main(str(spec))
    assert "asked" in seen
    spec.write_text(json.dumps({"seed": 0, "compute_dtype": "half"}))
    with pytest.raises(FrankenmoeError, match="compute_dtype"):
        awq_engine.main(str(spec))


@pytest.mark.parametrize(
    "done, total, elapsed, want",
    [
        (3, 30, 41.2, "quantize  layer 3/30  elapsed 41 s  about 371 s left"),
        (1, 4, 2.6, "quantize  layer 1/4  elapsed 3 s  about 8 s left"),
        (4, 4, 10.4, "quantize  layer 4/4  elapsed 10 s"),
        (1, 32, 700, "quantize  layer 1/32  elapsed 12 min  about 362 min left"),
        (10, 20, 599.4, "quantize  layer 10/20  elapsed 599 s  about 599 s left"),
    ],
)
def test_progress_line(done, total, elapsed, want):
    assert progress_line(done, total, elapsed) == want


def test_layer_progress_prints_one_line_per_layer_on_its_first_event():
    lines, now = [], [100.0]
    progress = LayerProgress(3, lines.append, clock=lambda: now[0])
    now[0] = 112.0
    progress.layer_complete(layer_idx=0, submodule_finalized=False)
    progress.layer_complete(layer_idx=0, submodule_finalized=True)  # packed: same layer, no new line
    now[0] = 124.0
    progress.layer_complete(layer_idx=1, submodule_finalized=True)  # a layer with nothing to pack
    progress.layer_complete(layer_idx=3, submodule_finalized=False)  # lm_head step: not a decoder layer
    now[0] = 136.0
    assert progress.layer_complete(layer_idx=2, submodule_finalized=False) is None  # None: do not stop the loop
    assert lines == [
        "quantize  layer 1/3  elapsed 12 s  about 24 s left",
        "quantize  layer 2/3  elapsed 24 s  about 12 s left",
        "quantize  layer 3/3  elapsed 36 s",
    ]


def test_the_child_writes_progress_to_stderr_and_to_the_parents_pipe(capsys):
    read_end, write_end = os.pipe()
    try:
        write = awq_engine._progress_writer({PROGRESS_FD_ENV: str(write_end)})
        write("quantize  layer 1/2  elapsed 1 s  about 1 s left")
        assert capsys.readouterr().err == "\nquantize  layer 1/2  elapsed 1 s  about 1 s left\n"  # not a tty
        assert os.read(read_end, 1000) == b"quantize  layer 1/2  elapsed 1 s  about 1 s left\n"
    finally:
        os.close(read_end)
        os.close(write_end)
    awq_engine._progress_writer({})("quantize  layer 2/2  elapsed 2 s")  # no pipe: stderr only
    assert capsys.readouterr().err == "\nquantize  layer 2/2  elapsed 2 s\n"


FAKE_ENGINE = textwrap.dedent("""\
    import os, sys, time
    fd = int(os.environ["FRANKENMOE_AWQ_PROGRESS_FD"])
    print("GPTQModel banner on stdout", flush=True)
    for i in (1, 2):
        line = f"quantize  layer {i}/2  elapsed {i} s"
        print(line, file=sys.stderr, flush=True)
        os.write(fd, (line + "\\n").encode())
        time.sleep(0.05)
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
    """)


def _fake_child(monkeypatch, tmp_path):
    """run_engine, unwatched, with a stand-in child process."""
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    real_popen = awq_engine.subprocess.Popen

    def popen(cmd, **kwargs):
        return real_popen([sys.executable, str(script)], **kwargs)

    monkeypatch.setattr(awq_engine.subprocess, "Popen", popen)
    monkeypatch.setattr(awq_engine, "bars_enabled", lambda: False)


def test_unwatched_the_parent_relays_progress_lines_and_logs_everything(tmp_path, monkeypatch):
    _fake_child(monkeypatch, tmp_path)
    relayed = []
    run_engine({"x": 1}, tmp_path / "engine-spec.json", tmp_path / "engine.log", relay=relayed.append)
    assert relayed == ["quantize  layer 1/2  elapsed 1 s", "quantize  layer 2/2  elapsed 2 s"]
    log = (tmp_path / "engine.log").read_text()
    assert "GPTQModel banner on stdout" in log and "quantize  layer 2/2  elapsed 2 s" in log
    assert not (tmp_path / "engine-work").exists()


def test_unwatched_a_failing_engine_names_the_last_log_line(tmp_path, monkeypatch):
    _fake_child(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_EXIT", "3")
    with pytest.raises(FrankenmoeError, match=r"exit 3\): quantize  layer 2/2"):
        run_engine({"x": 1}, tmp_path / "engine-spec.json", tmp_path / "engine.log", relay=lambda line: None)


def test_device_facts_are_read_once_per_process_and_in_one_module():
    device.read_cpuinfo.cache_clear()
    first = device.read_cpuinfo()
    assert device.read_cpuinfo() is first and device.read_cpuinfo.cache_info().misses == 1
    package = Path(__file__).resolve().parent.parent / "frankenmoe"
    readers = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if '/proc/cpuinfo")' in p.read_text()]
    assert readers == ["support/device.py"]


def test_no_gpu_driver_no_torch_import():
    """The stage's cache key asks compute_path() on every build; without a GPU
    driver that must not import torch (a fully cached build never does)."""
    import subprocess

    if device.gpu_driver_loaded():
        pytest.skip("this machine has a GPU driver")
    code = (
        "import sys; from frankenmoe.quantization.awq_engine import compute_path; p = compute_path(); "
        "print('torch' in sys.modules, p['device'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout.split()
    assert out == ["False", "cpu"]


def test_speedups_are_all_on_unless_the_environment_names_others():
    from frankenmoe.quantization.gptqmodel_patches import SPEEDUPS, SPEEDUPS_ENV, speedups_wanted

    assert speedups_wanted({}) == list(SPEEDUPS) == speedups_wanted({SPEEDUPS_ENV: "all"})
    assert speedups_wanted({SPEEDUPS_ENV: "none"}) == []
    assert speedups_wanted({SPEEDUPS_ENV: " clip-matmul, "}) == ["clip-matmul"]
    with pytest.raises(FrankenmoeError, match="unknown fast"):
        speedups_wanted({SPEEDUPS_ENV: "fast"})
    # Other speed-ups change the bytes too: the cache key (compute_path) says so.
    assert "speedups" not in compute_path(environ={SPEEDUPS_ENV: "all"}, cpuinfo=HASWELL, gpu=None)
    assert compute_path(environ={SPEEDUPS_ENV: "none"}, cpuinfo=HASWELL, gpu=None)["speedups"] == "none"


# --- the GPTQModel patches, on small random tensors (imports GPTQModel: a few seconds) ---


def _awq_processor(group_size=128, sym=False):
    """What AWQProcessor's clip search and quantizer read from `self`."""
    import types

    from gptqmodel.looper.awq_processor import AWQProcessor

    p = types.SimpleNamespace(qcfg=types.SimpleNamespace(group_size=group_size, sym=sym, bits=4))
    p._pseudo_quantize_tensor_into = types.MethodType(AWQProcessor._pseudo_quantize_tensor_into, p)
    p.pseudo_quantize_tensor = types.MethodType(AWQProcessor.pseudo_quantize_tensor, p)
    return p


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("shape, group_size", [((128, 256), 128), ((64, 192), 64)])
def test_clip_search_by_matmul_chooses_what_gptqmodel_chooses(shape, group_size, sym):
    """In float32 both score the same candidates with the same numbers up to
    summation order: the chosen clip bounds agree (the example's whole AWQ output
    came out byte-identical with and without the speed-up)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("gptqmodel")
    from gptqmodel.looper.awq_processor import AWQProcessor

    from frankenmoe.quantization.gptqmodel_patches import best_clip_by_matmul

    g = torch.Generator().manual_seed(0)
    out_f, in_f = shape
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    x = torch.randn(3, 700, in_f, generator=g) * torch.rand(in_f, generator=g) * 3  # 2100 tokens, sampled to 525
    p = _awq_processor(group_size, sym)
    stock = AWQProcessor._compute_best_clip(p, w, x)
    ours = best_clip_by_matmul(p, w, x)
    assert ours.shape == stock.shape == (out_f, in_f // group_size, 1)
    assert (ours == stock).float().mean() > 0.99
    assert torch.allclose(ours, stock, rtol=0.06)  # a differing choice is the neighbouring bound


def test_the_clip_patch_refuses_code_it_was_not_written_for(monkeypatch):
    pytest.importorskip("gptqmodel")
    from gptqmodel.looper.awq_processor import AWQProcessor

    def other(self, w, input_feat, n_grid=20):
        return None

    monkeypatch.setattr(AWQProcessor, "_compute_best_clip", other)
    assert gptqmodel_patches.patch_clip_search() is False
    assert AWQProcessor._compute_best_clip is other
    monkeypatch.undo()
    stock = AWQProcessor._compute_best_clip
    try:
        assert gptqmodel_patches.patch_clip_search() is True
        assert AWQProcessor._compute_best_clip is gptqmodel_patches.best_clip_by_matmul
    finally:
        AWQProcessor._compute_best_clip = stock


def test_float32_linears_pack_into_the_awq_gemm_layout():
    """allow_float32_awq_packing lets GPTQModel pack a float32 linear; the packed
    codes are the pseudo-quantizer's and the scales float16, as published."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("gptqmodel")
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    from frankenmoe.checkpoints.awq_format import dequantize, unpack_int4

    stock = list(AwqTorchLinear.SUPPORTS_DTYPES)
    try:
        gptqmodel_patches.allow_float32_awq_packing()
        assert AwqTorchLinear.SUPPORTS_DTYPES == [*stock, torch.float32]
        gptqmodel_patches.allow_float32_awq_packing()  # twice is once
        assert AwqTorchLinear.SUPPORTS_DTYPES == [*stock, torch.float32]
        ok, err = AwqTorchLinear._validate_shared(pack_dtype=torch.int32, dtype=torch.float32)
        assert ok, err

        g = torch.Generator().manual_seed(0)
        w = torch.randn(64, 256, generator=g) * 0.05
        wq, scales, zeros = _awq_processor(128).pseudo_quantize_tensor(w)
        linear = torch.nn.Linear(256, 64, bias=False)
        linear.weight.data = wq
        q = AwqTorchLinear(
            bits=4,
            group_size=128,
            sym=False,
            desc_act=False,
            in_features=256,
            out_features=64,
            bias=False,
            dtype=torch.float32,
            register_buffers=False,
        )
        q.pack(linear, scales, zeros)
        assert q.scales.dtype == torch.float16 and q.qweight.dtype == torch.int32
        codes = torch.round(wq / scales.repeat_interleave(128, dim=1) + zeros.repeat_interleave(128, dim=1))
        assert torch.equal(unpack_int4(q.qweight).t(), codes.to(torch.int32))
        assert torch.equal(unpack_int4(q.qzeros).t(), zeros.to(torch.int32))
        assert torch.allclose(dequantize(q.qweight, q.qzeros, q.scales, 128), wq, atol=1e-3 * w.abs().max())
    finally:
        AwqTorchLinear.SUPPORTS_DTYPES = stock


def test_the_float32_patch_refuses_an_unexpected_kernel(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("gptqmodel")
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    monkeypatch.setattr(AwqTorchLinear, "SUPPORTS_DTYPES", [torch.float16])
    with pytest.raises(FrankenmoeError, match="FRANKENMOE_AWQ_DTYPE=bfloat16"):
        gptqmodel_patches.allow_float32_awq_packing()
    assert AwqTorchLinear.SUPPORTS_DTYPES == [torch.float16]


def test_merge_and_fit_keys_name_the_machine_class(monkeypatch):
    """Hidden-state router rows (merge) and fitted routers (gates) are computed on a
    device: its class is in those stages' keys, so a CPU and a GPU build never share them."""
    from frankenmoe.recipe import load_recipe
    from frankenmoe.routing.router_fit import fit_compute
    from frankenmoe.stages.merge import MergeStage
    from tests.conftest import EXAMPLE

    recipe = load_recipe(EXAMPLE)
    monkeypatch.setattr(device, "read_cpuinfo", lambda: ZEN4)
    monkeypatch.setattr(device, "cuda_device", lambda: None)
    cpu = MergeStage().fingerprint(recipe, None, {})
    assert cpu == {"compute": {"device": "cpu", "isa": "avx512"}}
    monkeypatch.setattr(device, "cuda_device", lambda: ((9, 0), "NVIDIA H200"))
    assert MergeStage().fingerprint(recipe, None, {}) == {
        "compute": {"device": "cuda", "capability": "sm_90 NVIDIA H200"}
    }
    on_cpu = recipe.model_copy(update={"merge": recipe.merge.model_copy(update={"device": "cpu"})})
    assert MergeStage().fingerprint(on_cpu, None, {}) == cpu  # merge.device: cpu on a GPU machine
    assert fit_compute("cuda") == {"device": "cuda", "capability": "sm_90 NVIDIA H200", "dtype": "bfloat16"}
    assert fit_compute("cpu", cpuinfo=ZEN4) == {"device": "cpu", "isa": "avx512", "dtype": "bfloat16"}
    assert fit_compute("cpu", cpuinfo=HASWELL) == {"device": "cpu", "isa": "avx2", "dtype": "float32"}
    assert fit_compute("cpu", "float32", cpuinfo=ZEN4)["dtype"] == "float32"
