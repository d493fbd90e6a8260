"""The losses a router fit measures and minimizes: the held-out language-model loss
per file (which decides when the fit stops and what it keeps), the KL divergence
from a forced expert's output (distillation), and the Switch balance term."""

from __future__ import annotations

from frankenmoe.checkpoints.moe_blocks import forced_expert
from frankenmoe.measure.metrics import target_nll
from frankenmoe.support.progress import progress


def heldout_loss(model, held: list, batch_size: int, desc: str = "gates: held-out loss") -> float:
    """Mean over files of the language-model loss on each file's held-out windows."""
    per_file = file_losses(model, held, batch_size, desc)
    return round(sum(per_file) / len(per_file), 5)


def file_losses(model, held: list, batch_size: int, desc: str = "gates: held-out loss") -> list[float]:
    """Per file: the language-model loss (metrics.target_nll per token) on its held-out windows."""
    import torch

    batches = [(f, batch) for f, windows in enumerate(held) for batch in windows.split(batch_size)]
    totals = [[0.0, 0] for _ in held]
    with torch.no_grad():
        for f, batch in progress(batches, desc=desc):
            logprobs = torch.log_softmax(model(batch).logits[:, :-1].float(), -1)
            totals[f][0] += sum(target_nll(lp, ids.tolist()) for lp, ids in zip(logprobs, batch))
            totals[f][1] += batch[:, 1:].numel()
    return [total / n for total, n in totals]


def forced_logprobs(model, batch, experts: list[int]):
    """Log-probabilities of each row of `batch` with every token forced to that row's expert (no gradient)."""
    import torch

    out = torch.empty(0)
    with torch.no_grad():
        for e in sorted(set(experts)):
            rows = torch.tensor([i for i, x in enumerate(experts) if x == e])
            with forced_expert(model, e):
                lp = torch.log_softmax(model(batch[rows]).logits.float(), -1)
            if out.numel() == 0:
                out = torch.empty((len(experts), *lp.shape[1:]), dtype=lp.dtype, device=lp.device)
            out[rows.to(lp.device)] = lp
    return out


def kl_from(teacher, logits):
    """Mean per-token KL(teacher || the MoE's distribution), in nats."""
    import torch.nn.functional as F

    student = F.log_softmax(logits.float(), -1)
    return F.kl_div(
        student.reshape(-1, student.shape[-1]),
        teacher.reshape(-1, teacher.shape[-1]),
        log_target=True,
        reduction="batchmean",
    )


def balance_loss(router_out) -> "object":
    """Switch Transformer's auxiliary loss: E * sum_e (share of assignments to e) *
    (mean router probability of e); 1.0 when usage is perfectly even."""
    import torch

    logits, _, indices = router_out
    n_experts = logits.shape[-1]
    probs = torch.softmax(logits.float(), -1)
    share = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / indices.numel()
    return n_experts * (share * probs.mean(0)).sum()
