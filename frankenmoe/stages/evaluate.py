"""evaluate: the 16-bit side of verification, computed once per merge.

Runs the merged MoE (and, for forced routing, its sources on a few windows) over
the held-out evaluation text, each streamed one layer at a time from disk
(frankenmoe/checkpoints/streaming.py); the base's and experts' perplexities come from
`baseline`, shared by every routing of the same sources. It stores what every
later comparison needs:
`reference.safetensors` (evaluation token ids, the MoE's log-probs and router
weights) and `reference.json` (merge structure, forced-routing parity, per-domain
perplexities, routing statistics). Changing only thresholds, or verifying another
candidate with `frankenmoe verify --candidate`, reuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.checkpoints.tensor_file import TensorFileWriter
from frankenmoe.errors import IncompatibleModelsError
from frankenmoe.measure.documents import Reference
from frankenmoe.measure.evaluation import (
    forced_routing_parity,
    merge_structure,
    perplexity_of,
    routing_stats,
)
from frankenmoe.stages.base import StageContext, StageResult
from frankenmoe.stages.baseline import HeldOutResult, HeldOutTextStage, baseline, windows_sha256
from frankenmoe.stages.gates import gates_result, routed_model
from frankenmoe.stages.merge import merged_model
from frankenmoe.stages.resolve import model_paths
from frankenmoe.support.determinism import seed_everything


def reference_dir(result: StageResult) -> Path:
    """reference.json (domains, perplexities, routing, structure, forced routing) and
    reference.safetensors (tokens, 16-bit log-probs, router weights)."""
    return result.path


def reference(result: StageResult) -> Reference:
    return Reference.read(reference_dir(result) / "reference.json")


class EvaluateStage(HeldOutTextStage):
    name = "evaluate"
    # 2: forced routing also measures what survives of each expert (KL, perplexities)
    # 3: the base's and experts' perplexities come from `baseline`
    # 4: log-probs computed and stored one window at a time
    # 5: routing_stats also records each expert's top-1 share (the routing page's colours)
    version = 5
    depends = ("resolve", "merge", "gates", "baseline")
    packages = ("torch", "transformers", "safetensors", "tokenizers", "numpy")  # numpy: reference.safetensors

    def run(self, ctx: StageContext) -> HeldOutResult:
        import torch
        from transformers import AutoTokenizer

        seed_everything(0)
        v = ctx.recipe.verify
        merged = routed_model(ctx.inputs["gates"])
        paths = model_paths(ctx.inputs["resolve"])
        experts = [paths[f"experts[{i}]"] for i in range(len(ctx.recipe.experts))]
        tokenizer = AutoTokenizer.from_pretrained(merged)
        windows = self.windows(ctx.recipe, tokenizer)

        structure = merge_structure(merged, paths["base"], experts)
        shared = baseline(ctx.inputs["baseline"])
        if shared.windows_sha256 != windows_sha256(windows):
            raise IncompatibleModelsError(
                "the merged model's tokenizer splits verify.files differently from the base model's; "
                "merge with the base model's tokenizer"
            )
        moe = StreamingLM(merged)
        inputs = [ids[:-1] for _, ids in windows]
        domains = [d for d, _ in windows]
        top_k = moe.config.num_experts_per_tok
        specs = {
            "tokens": ("I64", (len(windows), v.seq_len + 1)),
            "logprobs": ("F32", (len(windows), v.seq_len, moe.config.vocab_size)),
            "router": ("F32", (moe.config.num_hidden_layers, len(windows) * v.seq_len, moe.config.num_local_experts)),
        }
        # The log-probs go to disk window by window, never held whole (max_tokens x vocabulary floats).
        with TensorFileWriter(ctx.out / "reference.safetensors", specs, {"format": "pt"}) as out:
            out.write("tokens", torch.tensor([ids for _, ids in windows]))
            routers: list = []
            run = moe.run(inputs, desc="verify: 16-bit reference")
            ppl = {"moe": perplexity_of(_logprobs(run, routers, out), windows), **shared.perplexity}
            router = torch.cat(routers, dim=1)
            out.write("router", router)
        # Forced routing needs only a little text: two windows per domain.
        sample = [w for i, w in enumerate(windows) if [d for d, _ in windows[:i]].count(w[0]) < 2]
        forced = forced_routing_parity(moe, [StreamingLM(e) for e in experts], sample)
        hidden_routing = None
        if gates_result(ctx.inputs["gates"]).fitted:
            hidden = StreamingLM(merged_model(ctx.inputs["merge"]))  # mergekit's own routers
            hidden_routers: list = []
            run = hidden.run(inputs, desc="verify: hidden-state routers")
            ppl["moe (hidden-state routers)"] = perplexity_of(_logprobs(run, hidden_routers), windows)
            hidden_routing = routing_stats(torch.cat(hidden_routers, dim=1), domains, v.seq_len, top_k)
        Reference(
            domains=domains,
            seq_len=v.seq_len,
            top_k=top_k,
            structure=structure,
            forced_routing=forced,
            perplexity=ppl,
            routing_16bit=routing_stats(router, domains, v.seq_len, top_k),
            routing_16bit_hidden=hidden_routing,
            expert_sources=[e.name for e in experts],
        ).write(ctx.out / "reference.json")
        ctx.log(f"evaluate  {len(windows)} windows x {v.seq_len} tokens over {', '.join(sorted(set(domains)))}")
        return HeldOutResult(windows=len(windows))


def _logprobs(run, routers: list, out: TensorFileWriter | None = None) -> Iterator:
    """A StreamingLM run's log-probs one window at a time (written to `out` as they
    pass); its router weights are collected into `routers` on the side."""
    for lp, router in run:
        if out is not None:
            out.write("logprobs", lp)
        routers.append(router)
        yield lp
