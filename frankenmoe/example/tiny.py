"""Train the offline example's models: a tiny Mistral base and two MLP-only experts.

Nothing can be downloaded at build or test time, so the example recipe and the
tests use models this module trains from the shipped corpora in a few minutes on a
CPU. The experts differ from the base only in their MLP weights, which makes the
merge checkable exactly: routing every token to expert k must reproduce expert k.

The output folder is keyed by a hash of everything that shapes it (corpora, the
settings below, the declared version of this code and of frankenmoe/example/training.py,
library versions);
frankenmoe/example/catalog.py makes them only when that key changes, through the
atomic store in frankenmoe/example/store.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from frankenmoe.example import training
from frankenmoe.example.store import STAMP
from frankenmoe.support.determinism import torch_scope
from frankenmoe.support.hashing import sha256_file
from frankenmoe.support.paths import shipped_dir
from frankenmoe.support.versions import tool_versions
from frankenmoe.text.corpus import read_documents

CALIBRATION = shipped_dir()
DOMAINS = ("code", "prose")
EVAL_WINDOWS = 64  # held-out windows per domain for the log's perplexities


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


def fixtures_key(settings: FixtureSettings) -> str:
    """Hash of every input that shapes the fixture bytes."""
    inputs = {
        "settings": asdict(settings),
        "corpora": {f"{d}/train.jsonl": sha256_file(CALIBRATION / d / "train.jsonl") for d in DOMAINS},
        "code": [training.CODE_VERSIONS["tiny"], training.CODE_VERSIONS["training"]],
        "versions": tool_versions(["torch", "transformers", "tokenizers"]),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def make_tiny(out: Path, settings: FixtureSettings = FixtureSettings(), log=print) -> None:
    """Train `out/{base,expert-code,expert-prose}` and stamp them with their key;
    frankenmoe/example/store.py places the folder atomically."""
    key = fixtures_key(settings)
    out.mkdir(parents=True)
    with torch_scope():
        metrics = _train_all(out, settings, log)
    (out / STAMP).write_text(
        json.dumps({"key": key, "settings": asdict(settings), "metrics": metrics}, indent=2, sort_keys=True) + "\n"
    )


def _train_all(out: Path, s: FixtureSettings, log) -> dict:
    import torch

    texts = {d: [doc["text"] for doc in read_documents([CALIBRATION / d / "train.jsonl"])] for d in DOMAINS}
    evals = {d: [doc["text"] for doc in read_documents([CALIBRATION / d / "eval.jsonl"])] for d in DOMAINS}

    tokenizer = _train_tokenizer(texts["code"] + texts["prose"], s)
    ids = {d: training.encode(tokenizer, texts[d]) for d in DOMAINS}
    eval_ids = {d: training.encode(tokenizer, evals[d]) for d in DOMAINS}

    def schedule(steps: int, lr: float) -> training.Schedule:
        return training.Schedule(steps, lr, s.seq_len, s.batch_size, warmup=max(1, steps // 10))

    base_dir = out / "base"
    model = _new_model(s)
    mixed = torch.cat([ids["code"], ids["prose"]])
    training.train(model, mixed, schedule(s.base_steps, s.base_lr), seed=s.seed, desc="fixtures: base")
    training.save(model, tokenizer, base_dir)
    metrics = {"base": training.perplexities(base_dir, eval_ids, s.seq_len, EVAL_WINDOWS)}

    for i, domain in enumerate(DOMAINS):
        expert = training.load(base_dir)  # start from the saved fp16 weights so non-MLP bits stay identical
        training.train_only_mlp(expert)
        training.train(
            expert,
            ids[domain],
            schedule(s.expert_steps, s.expert_lr),
            seed=s.seed + 1 + i,
            desc=f"fixtures: {domain} expert",
        )
        training.save(expert, tokenizer, out / f"expert-{domain}")
        metrics[f"expert-{domain}"] = training.perplexities(out / f"expert-{domain}", eval_ids, s.seq_len, EVAL_WINDOWS)
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
