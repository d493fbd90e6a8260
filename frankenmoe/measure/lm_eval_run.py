"""The child process that runs lm-eval: `python -m frankenmoe.measure.lm_eval_run SPEC.json`.

lm-eval sets up logging, seeds and library settings process-wide, so the evals stage
runs it here, never in the build's own process. Each model is loaded once and scored
on every task it still needs; each (model, task) result is written into the score
store as soon as it is done (an interrupted run keeps what finished), and one progress
line per model and task goes to stdout, which the stage relays (everything else lm-eval
and the libraries print goes to stderr, the stage's log).

The spec (written by frankenmoe/stages/evals.py): {"include": folder or null, "tokenizer": folder,
"limit": number or null, "jobs": [{"label", "reader", "path", "store_file", "task", "shots"}]},
jobs grouped by model. Readers: "hf" is lm-eval's own `hf` model type on a folder
transformers reads; "transformers-dequantized" is lm-eval's HFLM over the model
transformers' from_pretrained reads from a compressed-tensors folder (`dequantized`);
"frankenmoe-awq" is frankenmoe's AWQ reader wrapped in lm-eval's HFLM; "frankenmoe-gguf" is
llama.cpp on a GGUF file with the merged model's tokenizer (frankenmoe/measure/gguf_lm.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from itertools import groupby
from pathlib import Path
from typing import Any

from frankenmoe.checkpoints.loading import load_awq
from frankenmoe.measure.benchmarks import task_manager
from frankenmoe.measure.gguf_lm import GgufLM
from frankenmoe.support.jsonio import write_json

BATCH_SIZE = 4
# lm-eval's result fields that hold when and where it ran, not what it measured.
VOLATILE = (
    "date",
    "pretty_env_info",
    "git_hash",
    "upper_git_hash",
    "start_time",
    "end_time",
    "total_evaluation_time_seconds",
)


def load(reader: str, path: str, tokenizer: str | None):
    """The lm-eval model for one folder (or GGUF file), loaded once for all its tasks."""
    from lm_eval.api.registry import get_model
    from transformers import AutoTokenizer

    hf = get_model("hf")
    common = {"device": "cpu", "batch_size": BATCH_SIZE}
    if reader == "hf":
        return hf(pretrained=path, dtype="float32", **common)
    if reader == "transformers-dequantized":
        return hf(pretrained=dequantized(path), tokenizer=AutoTokenizer.from_pretrained(path), **common)
    if reader == "frankenmoe-awq":
        return hf(pretrained=load_awq(Path(path), "float32"), tokenizer=AutoTokenizer.from_pretrained(path), **common)
    if reader == "frankenmoe-gguf":
        return GgufLM(gguf=path, tokenizer=tokenizer)
    raise ValueError(f"unknown reader {reader!r}")


def dequantized(path: str):
    """The compressed-tensors folder as transformers reads it, its 4-bit weights dequantized
    at load (`CompressedTensorsConfig(dequantize=True)`), every weight in float32.

    lm-eval's `hf` on the folder gives the same scores (on the real example every metric
    within 5e-5 relative, `make bench`) about four times slower on CPU: transformers 5.24 leaves the fused
    expert weights in float16 whatever `dtype` asks, and float16 matmuls are slow on
    CPUs; float16 to float32 is exact."""
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    config = CompressedTensorsConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, quantization_config=config)
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def portable(value: Any) -> Any:
    """lm-eval's results with local absolute paths (a model folder, a task's data
    file) cut to their last part: nothing local leaves the machine."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and len(value) < 4096 and os.path.exists(value):
        return Path(value).name
    return value


def result_document(out: dict) -> dict:
    """What is kept of simple_evaluate's answer: the measurements and their settings.
    The store shares it between recipes, so nothing names the model as one recipe does
    (its label there, its folder): the results file's keys say which model it is."""
    doc = {k: v for k, v in out.items() if k not in VOLATILE and k != "samples"}
    config = dict(doc.get("config") or {})
    for name in ("model_args", "model_dtype"):
        config.pop(name, None)
    doc["config"] = config
    return json.loads(json.dumps(portable(doc), default=str))


def main(spec_file: str) -> int:
    from lm_eval import evaluator

    progress = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever lm-eval prints goes to the log, not between the progress lines
    spec = json.loads(Path(spec_file).read_text())
    jobs = spec["jobs"]
    include = Path(spec["include"]) if spec["include"] else None
    if include is not None:
        os.chdir(include)  # a task's data file named relative to its YAML is found there
    manager = task_manager(include, {j["task"] for j in jobs})
    done, start = 0, time.monotonic()
    for (label, reader, path), group in groupby(jobs, key=lambda j: (j["label"], j["reader"], j["path"])):
        lm = load(reader, path, spec["tokenizer"])
        for job in group:
            t = time.monotonic()
            out = evaluator.simple_evaluate(
                model=lm,
                tasks=[job["task"]],
                num_fewshot=job["shots"],
                limit=spec["limit"],
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=1000,
            )
            write_json(Path(job["store_file"]), result_document(out))
            done += 1
            spent = time.monotonic() - start
            left = spent / done * (len(jobs) - done)
            print(
                f"evals     {label} · {job['task']}: {time.monotonic() - t:.1f} s "
                f"({done} of {len(jobs)}, about {left:.0f} s left)",
                file=progress,
            )
        del lm
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
