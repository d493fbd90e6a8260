"""Train the offline example's models: a tiny Mistral base and two MLP-only experts.

Nothing can be downloaded at build or test time, so the example recipe and the
tests use models this module trains from the shipped corpora in a few minutes on a
CPU. The experts differ from the base only in their MLP weights, which makes the
merge checkable exactly: routing every token to expert k must reproduce expert k.

The output folder is keyed by a hash of everything that shapes it (corpora, the
settings below, this file, library versions); `ensure_fixtures` rebuilds only when
that key changes, and writes atomically so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.moe.corpus import read_documents
from pipeline.support.hashing import sha256_file
from pipeline.support.paths import shipped_dir
from pipeline.support.progress import progress
from pipeline.support.versions import tool_versions

CALIBRATION = shipped_dir()
DOMAINS = ("code", "prose")


@dataclass(frozen=True)
class FixtureSettings:
    """Sizes from docs/notes.md: small enough for minutes on 2 cores, big
    enough that the experts really differ on their domains."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seq_len: int = 128
    batch_size: int = 16
    base_steps: int = 400
    base_lr: float = 3e-3
    expert_steps: int = 300
    expert_lr: float = 2e-3
    seed: int = 0
    threads: int = 2


def fixtures_key(settings: FixtureSettings) -> str:
    """Hash of every input that shapes the fixture bytes."""
    inputs = {
        "settings": asdict(settings),
        "corpora": {f"{d}/train.jsonl": sha256_file(CALIBRATION / d / "train.jsonl") for d in DOMAINS},
        "code": sha256_file(Path(__file__)),
        "versions": tool_versions(["torch", "transformers", "tokenizers"]),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def ensure_fixtures(out: Path, settings: FixtureSettings = FixtureSettings(), log=print) -> Path:
    """Make `out/{base,expert-code,expert-prose}` unless they exist for this key."""
    key = fixtures_key(settings)
    stamp = out / "fixtures.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        log(f"fixtures: cached ({out})")
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    metrics = _train_all(tmp, settings, log)
    (tmp / "fixtures.json").write_text(
        json.dumps({"key": key, "settings": asdict(settings), "metrics": metrics}, indent=2, sort_keys=True) + "\n"
    )
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        shutil.rmtree(old)
    tmp.rename(out)
    log(f"fixtures: written to {out}")
    return out


def _train_all(out: Path, s: FixtureSettings, log) -> dict:
    import torch

    torch.set_num_threads(s.threads)
    torch.use_deterministic_algorithms(True)
    texts = {d: [doc["text"] for doc in read_documents([CALIBRATION / d / "train.jsonl"])] for d in DOMAINS}
    evals = {d: [doc["text"] for doc in read_documents([CALIBRATION / d / "eval.jsonl"])] for d in DOMAINS}

    tokenizer = _train_tokenizer(texts["code"] + texts["prose"], s)
    ids = {d: _encode(tokenizer, texts[d]) for d in DOMAINS}
    eval_ids = {d: _encode(tokenizer, evals[d]) for d in DOMAINS}

    base_dir = out / "base"
    model = _new_model(s)
    mixed = torch.cat([ids["code"], ids["prose"]])
    _train(model, mixed, s.base_steps, s.base_lr, s, seed=s.seed, desc="fixtures: base")
    _save(model, tokenizer, base_dir)
    metrics = {"base": _perplexities(base_dir, eval_ids, s)}

    for i, domain in enumerate(DOMAINS):
        expert = _load(base_dir)  # start from the saved fp16 weights so non-MLP bits stay identical
        for name, p in expert.named_parameters():
            p.requires_grad = ".mlp." in name
        _train(
            expert, ids[domain], s.expert_steps, s.expert_lr, s, seed=s.seed + 1 + i, desc=f"fixtures: {domain} expert"
        )
        _save(expert, tokenizer, out / f"expert-{domain}")
        metrics[f"expert-{domain}"] = _perplexities(out / f"expert-{domain}", eval_ids, s)
    for name, ppl in metrics.items():
        log(f"fixtures: {name} held-out perplexity " + ", ".join(f"{d} {v:.1f}" for d, v in ppl.items()))
    return metrics


def _train_tokenizer(texts: list[str], s: FixtureSettings):
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=s.vocab_size, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    bpe.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=s.max_position_embeddings,
    )


def _encode(tokenizer, texts: list[str]):
    import torch

    eos = tokenizer.eos_token_id
    out: list[int] = []
    for text in texts:
        out.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        out.append(eos)
    return torch.tensor(out, dtype=torch.long)


def _new_model(s: FixtureSettings):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(s.seed)
    config = MistralConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        max_position_embeddings=s.max_position_embeddings,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    return MistralForCausalLM(config)


def _train(model, data, steps: int, lr: float, s: FixtureSettings, seed: int, desc: str) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    model.train()
    for _ in progress(range(steps), desc=desc):
        starts = torch.randint(0, len(data) - s.seq_len - 1, (s.batch_size,), generator=gen)
        batch = torch.stack([data[i : i + s.seq_len + 1] for i in starts.tolist()])
        loss = _lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    model.eval()


def _lm_loss(model, batch):
    import torch.nn.functional as F

    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def _save(model, tokenizer, path: Path) -> None:
    import torch

    model.to(torch.float16).save_pretrained(path)
    model.to(torch.float32)
    tokenizer.save_pretrained(path)


def _load(path: Path):
    import torch
    from transformers import MistralForCausalLM

    return MistralForCausalLM.from_pretrained(path, dtype=torch.float32)


def _perplexities(path: Path, eval_ids: dict, s: FixtureSettings) -> dict[str, float]:
    import torch

    model = _load(path)
    out = {}
    with torch.no_grad():
        for domain, ids in eval_ids.items():
            n = (len(ids) - 1) // s.seq_len
            windows = ids[: n * s.seq_len + 1]
            batch = torch.stack([windows[i * s.seq_len : (i + 1) * s.seq_len + 1] for i in range(min(n, 64))])
            out[domain] = round(math.exp(_lm_loss(model, batch).item()), 3)
    return out
