"""Fitting a MoE's routers: train only `gate.weight` of every layer on text.

mergekit-moe's router rows come from the hidden states of a few prompts, taken
before attention, while the router sees the state after attention and its norm:
a guess. Here the fit has two phases:

1. `start: best_expert`: each file of fitting text gets the expert whose MLPs model
   it best (its held-out windows with every token forced to one expert), then each
   layer's router in turn, in one forward pass, is fitted as a classifier (L-BFGS,
   cross-entropy, a small L2 term) that sends the file's tokens to that expert, on
   the very inputs the router sees with the layers before it already fitted. Since
   the experts differ only in their MLPs, routing every token to its file's expert
   reproduces that expert: the start aims at the best expert on every file.
2. Adam steps on the language-model loss of the MoE itself, everything else frozen,
   with an optional Switch-Transformer load-balance term, kept only while the
   held-out loss improves (mixing experts can beat the best one).

The model computes in bfloat16 where the machine does so natively (a GPU, or a CPU
with AVX512-BF16 or AMX: 2.6x faster per step than float32 on the example) and in
float32 elsewhere; the routers themselves stay float32 (their inputs are cast), so
small Adam steps are not rounded away. `fit_compute` names the path for the cache key.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from frankenmoe.checkpoints.moe_blocks import forced_expert, moe_blocks
from frankenmoe.measure.metrics import assignment_entropy_bits
from frankenmoe.routing.fit_losses import balance_loss, file_losses, forced_logprobs, heldout_loss, kl_from
from frankenmoe.support.atomic import link_or_copy
from frankenmoe.support.determinism import seed_everything
from frankenmoe.support.device import cpu_flags, device_class, read_cpuinfo
from frankenmoe.support.progress import progress

NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags; ARM's `bf16` feature


def fit_compute(device: str, dtype: str = "auto", cpuinfo: str | None = None) -> dict[str, str]:
    """Where and in which dtype the fit computes, from `gates.device` (auto, cpu,
    cuda) and `gates.dtype` (auto: bfloat16 where native): part of the gates key and
    the lock, so fits on machines that round differently never share an entry.
    Without a GPU driver it does not import torch."""
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    where = device_class(device, cpuinfo=cpuinfo)
    if dtype == "auto":
        native = where["device"] == "cuda" or bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)
        dtype = "bfloat16" if native else "float32"
    return {**where, "dtype": dtype}


@dataclass
class StartResult:
    """The `best_expert` start: what each file was sent to and how well each layer's router learned it."""

    heldout_before: float  # the held-out loss with the merge's routers (fit_routers' step 0 comes after the start)
    expert_loss: list[list[float]]  # per file, per expert: held-out loss with every token forced to that expert
    experts: list[int]  # per file: the expert with the lowest of those losses
    accuracy: list[float]  # per layer: share of the fitting tokens whose top-1 expert is their file's
    heldout_accuracy: list[float]  # per layer: the same on the held-out windows, which the classifier never saw
    windows: int  # fitting windows per file in the classifier pass
    seconds: float


@dataclass
class FitResult:
    routers: dict[int, "object"]  # layer -> the best gate weight (torch.Tensor, float32, CPU)
    loss: list[float]  # language-model loss per step on its training batch (without the balance term)
    heldout: list[dict]  # {"step", "loss"}: the held-out windows' loss at each check (step 0: before fitting)
    best_step: int  # the check whose routers are kept (0: the routers it started from)
    stopped: str  # why the fit ended
    seconds: float
    entropy_before: list[float]  # expert-usage entropy per layer (bits), hidden-state routers
    entropy_after: list[float]  # the same with the kept routers
    start: StartResult | None  # None: Adam started from the merge's routers


@dataclass(frozen=True)
class Schedule:
    """How long the fit runs: at most `steps` Adam steps; the held-out loss is
    measured every `check_every` steps, and the fit stops after `patience` checks
    without a new best. The learning rate rises linearly over the first `warmup`
    steps (0: none), so the first steps cannot throw a good start away."""

    steps: int
    check_every: int
    patience: int
    warmup: int = 0

    def lr_factor(self, i: int) -> float:
        """The learning rate's multiplier at step i + 1."""
        return min(1.0, (i + 1) / self.warmup) if self.warmup else 1.0


HELDOUT_MOST = 8  # held-out windows per file: each check costs about one training step's forward passes
START_WINDOWS = 32  # fitting windows per file in the best_expert start's one classifier pass
START_L2 = 1e-4  # keeps the classifier's logits finite on separable text: gate weights near 1, not exactly 1


def split_heldout(groups: list[list[list[int]]], share: float) -> tuple[list, list]:
    """Each file's windows split into training and held-out ones: its last
    max(1, share x n) windows, at most HELDOUT_MOST, are held out (fitting text
    only, never verify's). A file with fewer than two windows cannot be split:
    ValueError carries its index."""
    train, heldout = [], []
    for i, g in enumerate(groups):
        if len(g) < 2:
            raise ValueError(i)
        k = min(max(1, int(len(g) * share)), HELDOUT_MOST)
        train.append(g[:-k])
        heldout.append(g[-k:])
    return train, heldout


def assignment_entropies(model, batch) -> list[float]:
    """Per layer: entropy (bits) of the share of top-k assignments each expert gets
    on `batch` (metrics.assignment_entropy_bits)."""
    import torch

    counts = []
    hooks = [
        b.gate.register_forward_hook(
            lambda m, i, o: counts.append(torch.bincount(o[2].reshape(-1), minlength=o[0].shape[-1]).float())
        )
        for b in moe_blocks(model)
    ]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return [assignment_entropy_bits(c) for c in counts]


def fit_routers(
    model,
    groups: list[list[list[int]]],
    heldout: list[list[list[int]]],
    schedule: Schedule,
    lr: float,
    batch_size: int,
    seed: int,
    balance: float,
    compute: dict[str, str],
    start: str = "routers",
    distill_from: list[int] | None = None,
    start_windows: int = START_WINDOWS,
) -> FitResult:
    """Train the routers of `model` (a loaded MoE) on windows of token ids, on
    `compute` (fit_compute), and keep the routers of the best held-out check.
    `groups` holds the training windows of each text file: every batch takes from
    each file in turn, so a large file cannot drown a small one (calibration text is
    rarely balanced across domains, and the routers would learn its proportions).
    `heldout`, per file, decides when to stop: its loss is the mean over files, so
    every file counts alike. How many steps help differs from recipe to recipe (25
    were right for one and far too few for another), so none is fixed; with
    `schedule.steps` 0 only the start runs. `start`: "routers" (the merge's) or
    "best_expert" (module docstring), its classifiers fitted on up to `start_windows`
    windows per file. `distill_from`, per file: the expert whose
    forced output the MoE is fitted toward (KL divergence from it on each window of
    that file) instead of the text's next tokens; None: the language-model loss."""
    import torch
    import torch.nn.functional as F

    seed_everything(seed)
    t0 = time.monotonic()
    device = compute["device"]
    blocks = moe_blocks(model)
    as_given = [b.gate.weight.detach().float().clone() for b in blocks]  # not rounded by the cast below
    model.to(device=device, dtype=getattr(torch, compute["dtype"])).train(False)
    for p in model.parameters():
        p.requires_grad_(False)
    casts = []
    for b, w in zip(blocks, as_given):
        b.gate.float()
        b.gate.weight.data.copy_(w)
        casts.append(b.gate.register_forward_pre_hook(lambda m, args: (args[0].float(), *args[1:])))
    gates = [b.gate.weight for b in blocks]
    for w in gates:
        w.requires_grad_(True)
    data = [torch.tensor(g, device=device) for g in groups]
    probe = torch.cat([g[:4] for g in data])
    entropy_before = assignment_entropies(model, probe)
    held = [torch.tensor(g, device=device) for g in heldout]
    started = _start_from_best_experts(model, data, held, batch_size, start_windows) if start == "best_expert" else None

    captured: list[tuple] = []
    hooks = (
        [b.gate.register_forward_hook(lambda m, i, o: captured.append(o)) for b in moe_blocks(model)] if balance else []
    )
    optimizer = torch.optim.Adam(gates, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    curve = [{"step": 0, "loss": heldout_loss(model, held, batch_size)}]
    best = {"step": 0, "loss": curve[0]["loss"], "routers": [w.detach().clone() for w in gates]}
    stopped = f"reached gates.steps ({schedule.steps})" if schedule.steps else "gates.steps is 0: the start alone"
    grad = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(True)  # a suspended streaming pass (torch.no_grad inside a generator) turns it off
        for step in progress(range(1, schedule.steps + 1), desc="gates: fitting routers"):
            picks = [int(torch.randint(len(data[i % len(data)]), (1,), generator=generator)) for i in range(batch_size)]
            batch = torch.stack([data[i % len(data)][j] for i, j in enumerate(picks)])
            rows_expert = [distill_from[i % len(data)] for i in range(batch_size)] if distill_from else None
            teacher = forced_logprobs(model, batch, rows_expert) if rows_expert else None
            captured.clear()
            logits = model(batch).logits
            lm = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
            fitted = lm if teacher is None else kl_from(teacher, logits)
            loss = (
                fitted + balance * sum(balance_loss(o) for o in captured) / max(len(captured), 1) if balance else fitted
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(round(float(lm.detach()), 5))
            if step % schedule.check_every and step != schedule.steps:
                continue
            curve.append({"step": step, "loss": heldout_loss(model, held, batch_size)})
            if curve[-1]["loss"] < best["loss"]:
                best = {"step": step, "loss": curve[-1]["loss"], "routers": [w.detach().clone() for w in gates]}
            elif (step - best["step"]) >= schedule.patience * schedule.check_every:
                stopped = (
                    f"held-out loss not below {best['loss']:.4f} (step {best['step']}) for {schedule.patience} checks"
                )
                break
    finally:
        torch.set_grad_enabled(grad)
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for w, kept in zip(gates, best["routers"]):
            w.requires_grad_(False)
            w.copy_(kept)
    entropy_after = assignment_entropies(model, probe)
    for h in casts:
        h.remove()
    routers = {i: w.detach().float().cpu().clone() for i, w in enumerate(gates)}
    return FitResult(
        routers, losses, curve, best["step"], stopped, time.monotonic() - t0, entropy_before, entropy_after, started
    )


def _start_from_best_experts(model, data: list, held: list, batch_size: int, most: int) -> StartResult:
    """Phase 1 (module docstring): each file's best expert from its held-out
    windows, then every router, layer by layer inside one forward pass over up to
    `most` evenly spaced training windows per file, fitted to send each
    token to its file's expert. Convex per layer (cross-entropy plus L2), so the
    merge's routers, where L-BFGS starts, do not change what it finds."""
    import torch
    import torch.nn.functional as F

    t0 = time.monotonic()
    before = heldout_loss(model, held, batch_size, "gates: start: held-out loss with the merge's routers")
    n_experts = moe_blocks(model)[0].gate.num_experts
    expert_loss = []
    for e in range(n_experts):
        with forced_expert(model, e):
            expert_loss.append(file_losses(model, held, batch_size, f"gates: start: forced to expert {e}"))
    per_file = [[round(expert_loss[e][f], 5) for e in range(n_experts)] for f in range(len(held))]
    experts = [min(range(n_experts), key=lambda e: losses[e]) for losses in per_file]
    picked = [g[:: max(1, len(g) // most)][:most] for g in data]
    windows = torch.cat(picked)
    labels = torch.cat([torch.full((p.numel(),), e, device=windows.device) for p, e in zip(picked, experts)])
    accuracy: list[float] = []
    layers = iter(progress(range(len(moe_blocks(model))), desc="gates: start: fitting the routers layer by layer"))

    def fit_layer(router, args):
        next(layers)
        x = args[0].reshape(-1, router.hidden_dim).float()
        w = router.weight.detach().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ w.T, labels) + START_L2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        with torch.no_grad():
            router.weight.copy_(w)
            accuracy.append(round(float(((x @ w.T).argmax(-1) == labels).float().mean()), 5))

    hooks = [b.gate.register_forward_pre_hook(fit_layer) for b in moe_blocks(model)]
    try:
        with torch.no_grad():
            model.model(windows)  # the decoder only: the head's logits are not needed
    finally:
        for h in hooks:
            h.remove()
    held_labels = torch.cat([torch.full((g.numel(),), e, device=g.device) for g, e in zip(held, experts)])
    return StartResult(
        before,
        per_file,
        experts,
        accuracy,
        _top1_accuracy(model, torch.cat(held), held_labels),
        min(map(len, picked)),
        time.monotonic() - t0,
    )


def _top1_accuracy(model, windows, labels) -> list[float]:
    """Per layer: share of the tokens of `windows` whose top-1 expert is their label.
    Against the fitting tokens' accuracy it shows how far the per-token routers
    generalize: a gap is misrouting on unseen text that no Adam step can see."""
    import torch

    accuracy: list[float] = []
    hooks = [
        b.gate.register_forward_hook(
            lambda m, i, o: accuracy.append(round(float((o[0].argmax(-1) == labels).float().mean()), 5))
        )
        for b in moe_blocks(model)
    ]
    try:
        with torch.no_grad():
            model.model(windows)
    finally:
        for h in hooks:
            h.remove()
    return accuracy


def write_fitted(merged: Path, out: Path, routers: dict[int, object]) -> list[str]:
    """`merged` with the router tensors replaced: same shards, names and dtypes,
    every other tensor byte-identical. Files without a router are hard-linked."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    wanted = {f"model.layers.{i}.block_sparse_moe.gate.weight": w for i, w in routers.items()}
    found, rewritten = set(), []
    for f in sorted(merged.iterdir()):
        keys: set[str] = set()
        if f.suffix == ".safetensors":
            with safe_open(f, framework="pt") as st:
                keys = set(st.keys())
        if not wanted.keys() & keys:
            link_or_copy(f, out / f.name)
            continue
        with safe_open(f, framework="pt") as st:
            tensors = {
                k: wanted[k].to(st.get_tensor(k).dtype).contiguous() if k in wanted else st.get_tensor(k) for k in keys
            }
        found |= wanted.keys() & keys
        save_file(tensors, out / f.name, metadata={"format": "pt"})
        os.chmod(out / f.name, 0o644)
        rewritten.append(f.name)
    if found != wanted.keys():
        raise RuntimeError(f"router tensors not found in {merged}: {sorted(wanted.keys() - found)[:2]}")
    return rewritten
