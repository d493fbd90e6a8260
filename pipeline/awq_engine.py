"""Run GPTQModel's AWQ in a child process: `python -m pipeline.awq_engine SPEC.json`.

GPTQModel patches transformers' Mixtral classes for the whole process, changes
environment variables and prints banners and tables. In its own process none of
that reaches the rest of the build (the verify checks load Mixtral afterwards),
and its console output goes to the stage's engine.log unless a person watches.
Its own process also lets the build tune the C allocator for it (ALLOCATOR).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.errors import FrankenmoeError
from pipeline.progress import bars_enabled


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


def engine_env(environ: dict[str, str]) -> dict[str, str]:
    """The engine's environment: `environ` plus the allocator settings and the
    CPU worker count GPTQModel needs, where `environ` does not set them."""
    env = {**ALLOCATOR, **environ}
    # GPTQModel refuses to start on a 2-core machine without this (../shared/NOTES.md).
    env.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    return env


def _die_with_parent() -> None:
    """A kill -9 of the build must not leave the engine running on."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_engine(spec: dict, spec_file: Path, log_file: Path) -> None:
    """Run the engine on `spec`; its own files (GPTQModel writes logs/ into its
    working folder) stay in a scratch folder beside `spec_file`, removed after."""
    spec_file.write_text(json.dumps(spec, sort_keys=True))
    work = spec_file.parent / "engine-work"
    work.mkdir(exist_ok=True)
    env = engine_env(dict(os.environ))
    watched = bars_enabled()
    with open(log_file, "wb") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.awq_engine", str(spec_file.resolve())],
            env=env, cwd=work, stdout=None if watched else log, stderr=None if watched else subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] if not watched else []
        raise FrankenmoeError(f"quantize: GPTQModel failed (exit {proc.returncode}){': ' + tail[0] if tail else ''}; full log: {log_file}")


def main(spec_file: str) -> None:
    import torch

    from pipeline.determinism import seed_everything

    spec = json.loads(Path(spec_file).read_text())
    seed_everything(spec["seed"])
    from gptqmodel import GPTQModel
    from gptqmodel.quantization.config import AWQConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = AWQConfig(bits=spec["bits"], group_size=spec["group_size"], sym=not spec["zero_point"], offload_to_disk=False)
    model = GPTQModel.load(spec["model"], config, device=device, dtype=torch.float16, trust_remote_code=spec["trust_remote_code"])
    windows = json.loads(Path(spec["windows"]).read_text())
    calibration = [{"input_ids": torch.tensor(w), "attention_mask": torch.ones(len(w), dtype=torch.long)} for w in windows]
    model.quantize(calibration, batch_size=1)
    model.save(spec["out"])


if __name__ == "__main__":
    main(sys.argv[1])
