"""Run GPTQModel's AWQ in a child process: `python -m frankenmoe.quantization.awq_engine SPEC.json`.

GPTQModel patches transformers' Mixtral classes for the whole process, changes
environment variables and prints banners and tables. In its own process none of
that reaches the rest of the build (the verify checks load Mixtral afterwards),
and its console output goes to the stage's engine.log unless a person watches.
Its own process also lets the build tune the C allocator for it (ALLOCATOR), run
AWQ in a dtype the machine computes fast (compute_path) and patch GPTQModel
narrowly where that needs it, without touching the parent.

Compute dtype. GPTQModel's AWQ computes in the dtype the model is loaded in.
float16 on a CPU is emulated and can be 100x slower than float32 or native
bfloat16 (docs/notes.md), so a CPU computes in float32 (with
allow_float32_awq_packing); a GPU keeps float16, GPTQModel's own path. bfloat16
was measured too, on a CPU with avx512_bf16 and the real example: no faster than
float32 with clip-matmul (quantize stage 123-186 s vs 136 s) and a worse 4-bit
model (mean KL 0.0802 vs 0.0784; GPTQModel's float16 path 0.0760), so it is only
an override (FRANKENMOE_AWQ_DTYPE=bfloat16). The
published checkpoint keeps its form: the quantize stage writes every float
tensor as float16 afterwards. Which path ran shapes the bytes, so the stage keys
its cache on compute_path() and passes its dtype as spec["compute_dtype"].

Speed. Besides the dtype, SPEEDUPS replace parts of GPTQModel that are slow on
a CPU by equivalent code (today one: the clipping search as matrix products);
they and the other changes to GPTQModel live in gptqmodel_patches.py.

Progress. One line per decoder layer goes to stderr ("quantize  layer 3/30
elapsed 41 s  about 370 s left") through GPTQModel's layer callback, and, when
nobody watches the build (the engine's console output then goes to engine.log),
through a dedicated pipe to the parent too, which writes it to its own stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from frankenmoe.errors import EnvironmentProblem, ToolFailed
from frankenmoe.quantization.gptqmodel_patches import (
    allow_float32_awq_packing,
    apply_speedups,
    count_expert_tokens,
    speedups_wanted,
)
from frankenmoe.support import determinism, settings
from frankenmoe.support.child import die_with_parent
from frankenmoe.support.device import machine_class
from frankenmoe.support.progress import bars_enabled

# glibc's malloc hands freed blocks back to the kernel eagerly, and AWQ's scale
# search allocates and frees the same buffers thousands of times: on 2 CPU cores a
# third of GPTQModel's time on the example went to 7.3 M page faults. Keeping freed
# memory in one arena gave the same output bytes in 37 s instead of 48 s
# (bench/results.md). Values a user sets in the environment win.
ALLOCATOR = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # glibc's ceiling; larger blocks are still mapped
    "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
    "MALLOC_TOP_PAD_": str(512 << 20),
}

COMPUTE_DTYPES = ("float16", "bfloat16", "float32")
# FRANKENMOE_AWQ_DTYPE=float16 runs GPTQModel's own path on a CPU too (for benchmarks).
DTYPE_ENV = settings.AWQ_DTYPE
# The child writes its per-layer lines also to this file descriptor when set.
PROGRESS_FD_ENV = settings.AWQ_PROGRESS_FD
PROGRESS_PREFIX = "quantize  layer "


def engine_env(environ: dict[str, str]) -> dict[str, str]:
    """The engine's environment: `environ` plus the allocator settings and the
    CPU worker count GPTQModel needs, where `environ` does not set them."""
    env = {**ALLOCATOR, **environ}
    # GPTQModel refuses to start on a 2-core machine without this (docs/notes.md).
    env.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    return env


# --- which device and dtype AWQ computes in ---------------------------------


def compute_path(
    environ: dict[str, str] | None = None,
    cpuinfo: str | None = None,
    gpu: tuple[tuple[int, int], str] | None | bool = True,
) -> dict[str, str]:
    """Where and in which dtype AWQ computes on this machine, for the engine and
    for the quantize stage's cache key: the same machine always gives the same
    dict (no timings, no host names).

    GPU: {"device": "cuda", "dtype": "float16", "capability": "sm_90 NVIDIA H200"};
    a CPU: {"device": "cpu", "dtype": "float32", "isa": "avx512"} (its widest vector
    extension: float32 rounding in the kernels depends on it).
    FRANKENMOE_AWQ_DTYPE in `environ` overrides the dtype (and says so: "dtype_from");
    FRANKENMOE_AWQ_SPEEDUPS other than all adds "speedups" (see SPEEDUPS).
    `cpuinfo` (text of /proc/cpuinfo) and `gpu` (((major, minor), name), or None
    for none) are detected when not given (frankenmoe/support/device.py).
    """
    environ = os.environ if environ is None else environ
    where = machine_class(gpu, cpuinfo)
    path = {"device": where["device"], "dtype": "float16" if where["device"] == "cuda" else "float32", **where}
    override = settings.awq_dtype(environ)
    if override:
        path["dtype"] = check_dtype(override, DTYPE_ENV)
        path["dtype_from"] = DTYPE_ENV
    if (settings.awq_speedups(environ) or "").strip() not in ("", "all"):  # they change the bytes too
        path["speedups"] = ",".join(speedups_wanted(environ)) or "none"
    return path


def check_dtype(name: str, where: str) -> str:
    if name not in COMPUTE_DTYPES:
        raise EnvironmentProblem(f"{where}: {name!r} is not a compute dtype; use one of {', '.join(COMPUTE_DTYPES)}")
    return name


# --- progress ------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 600 else f"{round(seconds / 60)} min"


def progress_line(done: int, total: int, elapsed: float) -> str:
    """`quantize  layer 3/30  elapsed 41 s  about 370 s left`: the time left
    assumes the remaining layers take as long as the finished ones on average."""
    line = f"{PROGRESS_PREFIX}{done}/{total}  elapsed {_duration(elapsed)}"
    if done < total and done > 0:
        line += f"  about {_duration(elapsed / done * (total - done))} left"
    return line


class LayerProgress:
    """GPTQModel's layer callback (`model.layer_callback`): the looper calls
    `layer_complete` once a decoder layer is quantized (submodule_finalized=False)
    and again once its modules are packed (True, possibly from a worker thread).
    The first call per layer prints one line."""

    def __init__(self, total: int, write: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.total, self.write, self.clock = total, write, clock
        self.start = clock()
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def layer_complete(self, *, layer_idx, submodule_finalized: bool = False):
        with self.lock:
            if not isinstance(layer_idx, int) or layer_idx < 0 or layer_idx >= self.total or layer_idx in self.seen:
                return None
            self.seen.add(layer_idx)
            self.write(progress_line(len(self.seen), self.total, self.clock() - self.start))
        return None


def _progress_writer(environ: dict[str, str]) -> Callable[[str], None]:
    """Writes a line to stderr, and to the parent's progress pipe when it gave one."""
    fd = settings.awq_progress_fd(environ)
    if fd is not None:
        try:
            os.set_inheritable(fd, False)  # not into anything GPTQModel starts
        except OSError:
            fd = None

    # Unwatched, GPTQModel's bars go to the same log without line ends: start a line.
    lead = "" if sys.stderr.isatty() else "\n"

    def write(line: str) -> None:
        print(lead + line, file=sys.stderr, flush=True)
        if fd is not None:
            try:
                os.write(fd, (line + "\n").encode())
            except OSError:
                pass

    return write


# --- the parent side -------------------------------------------------------------


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_engine(spec: dict, spec_file: Path, log_file: Path, relay: Callable[[str], None] = _to_stderr) -> None:
    """Run the engine on `spec`; its own files (GPTQModel writes logs/ into its
    working folder) stay in a scratch folder beside `spec_file`, removed after.
    Watched (a terminal), the engine writes to the terminal itself; otherwise its
    output goes to `log_file` and its per-layer progress lines, read from a pipe,
    to `relay` (the parent's stderr), line by line as they come."""
    spec_file.write_text(json.dumps(spec, sort_keys=True))
    work = spec_file.parent / "engine-work"
    work.mkdir(exist_ok=True)
    env = engine_env(dict(os.environ))
    watched = bars_enabled()
    cmd = [sys.executable, "-m", "frankenmoe.quantization.awq_engine", str(spec_file.resolve())]
    with open(log_file, "wb") as log:
        if watched:
            returncode = subprocess.run(cmd, env=env, cwd=work, preexec_fn=die_with_parent).returncode
        else:
            returncode = _run_relaying(cmd, env, work, log, relay)
    shutil.rmtree(work, ignore_errors=True)
    if returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] if not watched else []
        raise ToolFailed(
            f"quantize: GPTQModel failed (exit {returncode}){': ' + tail[0] if tail else ''}; full log: {log_file}"
        )


def _run_relaying(cmd: list[str], env: dict[str, str], cwd: Path, log, relay: Callable[[str], None]) -> int:
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            cmd,
            env={**env, PROGRESS_FD_ENV: str(write_end)},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
            preexec_fn=die_with_parent,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # the child holds the only write end: EOF when it exits
    try:
        with os.fdopen(read_end, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                if line.strip():
                    relay(line.rstrip("\n"))
        return proc.wait()
    except BaseException:  # Ctrl-C or a failing relay: the engine must not run on
        proc.kill()
        proc.wait()
        raise


# --- the child side ------------------------------------------------------------------


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    dtype_name = (
        check_dtype(spec["compute_dtype"], "engine spec compute_dtype")
        if spec.get("compute_dtype")
        else compute_path()["dtype"]
    )
    write = _progress_writer(os.environ)

    import torch

    determinism.seed_everything(spec["seed"])  # through the module: a test replaces it there
    from gptqmodel import GPTQModel
    from gptqmodel.quantization.config import AWQConfig

    dtype = getattr(torch, dtype_name)
    if dtype == torch.float32:
        allow_float32_awq_packing()
    speedups = apply_speedups(os.environ, write)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    moe = {}
    if spec.get("calibrate_all_experts"):
        # Every calibration token through every expert while AWQ collects its
        # statistics; the layer's output (the next layer's input) stays the routed one.
        from gptqmodel.quantization.config import ExpertsRoutingBypass, MoEConfig

        moe = {"moe": MoEConfig(routing=ExpertsRoutingBypass())}
    config = AWQConfig(
        bits=spec["bits"], group_size=spec["group_size"], sym=not spec["zero_point"], offload_to_disk=False, **moe
    )
    model = GPTQModel.load(
        spec["model"], config, device=device, dtype=dtype, trust_remote_code=spec["trust_remote_code"]
    )
    windows = json.loads(Path(spec["windows"]).read_text())
    calibration = [
        {"input_ids": torch.tensor(w), "attention_mask": torch.ones(len(w), dtype=torch.long)} for w in windows
    ]
    write(
        f"quantize  AWQ on {device} in {dtype_name}: {model.model.config.num_hidden_layers} layers, "
        f"{len(windows)} calibration windows; speed-ups: {', '.join(speedups) or 'none'}"
    )
    model.layer_callback = LayerProgress(model.model.config.num_hidden_layers, write)
    counts: dict[int, dict[int, list[int]]] = {}
    counting = count_expert_tokens(counts)
    started = time.monotonic()
    # One window per forward: batching windows was slower on a 2-core CPU (and changes the bytes).
    model.quantize(calibration, batch_size=1)
    quantized = time.monotonic()
    if spec.get("expert_tokens_out"):
        Path(spec["expert_tokens_out"]).write_text(
            json.dumps({"counted": counting, "layers": {str(k): v for k, v in sorted(counts.items())}})
        )
    model.save(spec["out"])
    write(f"quantize  AWQ done: layers {quantized - started:.1f} s, saving {time.monotonic() - quantized:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1])
