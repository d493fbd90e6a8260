"""Layer streaming (frankenmoe/checkpoints/streaming.py): the same outputs as a fully loaded
model for every folder kind, one layer in memory at a time, and a check that
names missing, mis-shaped and unexpected tensors."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from frankenmoe.checkpoints.loading import load_awq, load_merged
from frankenmoe.checkpoints.moe_blocks import forced_expert, moe_blocks
from frankenmoe.checkpoints.streaming import CheckpointReader, StreamingLM
from tests.test_example_build import eval_ids

pytestmark = pytest.mark.slow


def full_forward(model, ids):
    captured = []
    hooks = (
        [
            b.gate.register_forward_hook(lambda m, i, o: captured.append(torch.softmax(o[0].float(), -1)))
            for b in moe_blocks(model)
        ]
        if hasattr(model.model.layers[0].mlp, "gate")
        else []
    )
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits.float(), -1)
    for h in hooks:
        h.remove()
    return lp, captured


@pytest.mark.parametrize("kind", ["merged", "awq", "dense"])
def test_streaming_equals_the_loaded_model(example, fixture_models, kind):
    folder = {"merged": example["merged"], "awq": example["awq"], "dense": fixture_models / "expert-code"}[kind]
    loaded = (
        load_awq(folder).float() if kind == "awq" else load_merged(folder)
    )  # weights through fp16, as the kernel has them
    ids = torch.cat([eval_ids(example["merged"], "code", 96), eval_ids(example["merged"], "prose", 96)])
    out = list(StreamingLM(folder).run(ids.tolist(), batch_size=1))
    assert len(out) == 2
    for w, (lp, router) in enumerate(out):
        want_lp, want_router = full_forward(loaded, ids[w : w + 1])
        assert torch.equal(lp, want_lp[0])
        if kind == "dense":
            assert router is None
        else:
            assert router.shape == (4, 96, 2)
            assert torch.equal(router, torch.stack(want_router))


def test_forced_expert_streams_like_the_loaded_model(example):
    ids = eval_ids(example["merged"], "prose", 64)
    loaded = load_merged(example["merged"])
    with forced_expert(loaded, 1):
        want, _ = full_forward(loaded, ids)
    ((lp, _),) = StreamingLM(example["merged"]).run(ids.tolist(), expert=1)
    assert torch.equal(lp, want[0])


def test_a_forced_pass_runs_one_expert_per_token(example):
    """Forcing costs a dense model's MLPs (the probe and verify force every expert in
    turn): each block's experts get one index per token, whatever the top-k."""
    loaded = load_merged(example["merged"])
    seen = []
    hooks = [b.experts.register_forward_pre_hook(lambda m, args: seen.append(args[1])) for b in moe_blocks(loaded)]
    with torch.no_grad(), forced_expert(loaded, 1):
        loaded(eval_ids(example["merged"], "prose", 16))
    for h in hooks:
        h.remove()
    assert len(seen) == len(moe_blocks(loaded))
    assert all(i.shape[-1] == 1 and bool((i == 1).all()) for i in seen)


def test_only_one_layer_is_in_memory(example):
    """While a layer runs, every other layer, the embeddings and the head are on
    the meta device: nothing else of the model is held."""
    lm = StreamingLM(example["awq"])
    layers = list(lm.model.model.layers)
    seen = []

    def pre_hook(module, args, kwargs):
        held = [n for n, p in lm.model.named_parameters() if not p.is_meta]
        prefix = f"model.layers.{layers.index(module)}."
        seen.append(module)
        assert held and all(n.startswith(prefix) for n in held), held[:3]

    hooks = [layer.register_forward_pre_hook(pre_hook, with_kwargs=True) for layer in layers]
    list(lm.run(eval_ids(example["merged"], "code", 32).tolist()))
    for h in hooks:
        h.remove()
    assert len(seen) == len(layers)
    assert all(p.is_meta for p in lm.model.parameters())  # everything dropped again


def test_check_names_missing_misshaped_and_unexpected_tensors(example, tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # from the headers alone: no weight is read
        m.setattr(CheckpointReader, "_raw", lambda self, name: pytest.fail(f"read {name}"))
        assert StreamingLM(example["awq"]).check() == StreamingLM(example["merged"]).check() == []
    cases = {
        "missing": (lambda t: t.pop(sorted(k for k in t if k.endswith(".qzeros"))[0]), "missing tensor"),
        "unexpected": (
            lambda t: t.__setitem__(
                "model.layers.0.block_sparse_moe.experts.9.w1.qweight", torch.zeros(4, 4, dtype=torch.int32)
            ),
            "unexpected tensor",
        ),
        "shape": (lambda t: t.__setitem__("model.norm.weight", torch.ones(7, dtype=torch.float16)), "has shape (7,)"),
    }
    for case, (edit, message) in cases.items():
        copy = tmp_path / case
        shutil.copytree(example["awq"], copy)
        for shard in sorted(copy.glob("*.safetensors")):
            t = load_file(shard)
            if case != "unexpected" and not (
                {"model.norm.weight"} & t.keys() if case == "shape" else any(k.endswith(".qzeros") for k in t)
            ):
                continue
            edit(t)
            save_file(t, shard, metadata={"format": "pt"})
            break
        problems = StreamingLM(copy).check()
        assert len(problems) == 1 and message in problems[0], problems
