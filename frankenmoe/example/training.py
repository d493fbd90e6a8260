"""What both examples do to make their models: encode text, train, save, load, measure.

The tiny example trains a Mistral from scratch and then its experts' MLPs; the real
one fine-tunes SmolLM2's MLPs. Both use the one loop below, so a fix to it reaches
both, and both keys carry its declared version (CODE_VERSIONS: a new value retrains both).

The loop is deterministic on one machine: the windows come from a seeded torch
Generator, and the callers run it inside `support.determinism.torch_scope` (fixed
threads, deterministic algorithms), which restores torch's settings afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from frankenmoe.measure.metrics import perplexity
from frankenmoe.support.progress import progress

# What shapes the example models' bytes in this module, tiny.py and smollm2.py, declared
# as a stage declares its version: each file's sha256 when its code last changed (so
# the models cached then stay valid; renaming the package changed only imports).
# tests/test_fixture_cache.py fails when a module's code, imports aside, changes
# without a new value here; a new value retrains the examples.
CODE_VERSIONS = {
    "training": "7705722b98663c3d47587e0254716b5b7029202aff525704314a14b961361a08",
    "tiny": "6d63a3e7b47636139f1cb92b58043cf5b7eb04a3db38ce1c2cb6fbb6c21b10e5",
    "smollm2": "97b03efaf946eadda802ad48a746977f3f9a450686544038c966be82ab9a59ff",
}


@dataclass(frozen=True)
class Schedule:
    """AdamW with a cosine decay to 0 over `steps`, after a linear warm-up of
    `warmup` steps (0: none); windows of `seq_len` + 1 tokens, `batch_size` a step."""

    steps: int
    lr: float
    seq_len: int
    batch_size: int
    warmup: int = 0

    def factor(self, i: int) -> float:
        warm = min(1.0, (i + 1) / self.warmup) if self.warmup else 1.0
        return warm * 0.5 * (1 + math.cos(math.pi * min(i, self.steps) / self.steps))


def encode(tokenizer, texts: list[str]):
    """One token stream: each text without special tokens, followed by EOS."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def lm_loss(model, batch):
    """Mean next-token cross-entropy (nats) of a [B, T + 1] batch of token ids."""
    import torch.nn.functional as F

    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def train(model, data, schedule: Schedule, seed: int, desc: str) -> None:
    """Train the parameters with requires_grad on random windows of `data`
    (gradients clipped to norm 1); the model is left in eval mode."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    n = schedule.seq_len
    model.train()
    with torch.enable_grad():
        for _ in progress(range(schedule.steps), desc=desc):
            starts = torch.randint(0, len(data) - n - 1, (schedule.batch_size,), generator=gen)
            batch = torch.stack([data[i : i + n + 1] for i in starts.tolist()])
            loss = lm_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
    model.eval()


def train_only_mlp(model) -> None:
    """Freeze all but the MLP weights: the experts differ from the base only there,
    so routing every token to expert k reproduces expert k exactly."""
    for name, p in model.named_parameters():
        p.requires_grad = ".mlp." in name


def save(model, tokenizer, path: Path) -> None:
    """A float16 safetensors folder with the tokenizer; the model stays float32."""
    import torch

    model.to(torch.float16).save_pretrained(path)
    model.to(torch.float32)
    tokenizer.save_pretrained(path)


def load(path: Path):
    """A saved folder as a float32 model (its class from its config)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def perplexities(path: Path, held_out: dict, seq_len: int, max_windows: int) -> dict[str, float]:
    """Per domain, the perplexity of the saved model on up to `max_windows`
    consecutive windows of its held-out token stream (3 decimals: for the log)."""
    import torch

    model = load(path)
    out = {}
    with torch.no_grad():
        for domain, ids in held_out.items():
            n = min(max_windows, (len(ids) - 1) // seq_len)
            batch = torch.stack([ids[i * seq_len : (i + 1) * seq_len + 1] for i in range(n)])
            out[domain] = round(perplexity(lm_loss(model, batch).item()), 3)
    return out
