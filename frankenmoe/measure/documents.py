"""The 16-bit side's documents: `baseline.json` (the sources on the held-out text) and
`reference.json` (the merged MoE on it), read back as the classes that wrote them.

They are files a stage writes and lower layers read (verify's checks here in measure/,
the GGUF parity child in quantization/), so their types live here, not with the
stages. Frozen and strict: a document with a missing or unknown field is a bug
(stage versions renew every cached one whose shape changed), said on reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict

from frankenmoe.support.jsonio import write_json

# Per domain, per statistic (share, top1_share, mean_gate_weight), a [layer][expert]
# table: routing_stats' answer, copied as it is into verify.json, study rows and the
# routing page.
RoutingStats = dict[str, dict[str, list[list[float]]]]


class Document(BaseModel):
    """A JSON file one stage writes and others read: written whole (every field, keys
    sorted, as write_json does), read back validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))

    def write(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json"))


class MergeStructure(Document):
    """Bit-for-bit check of the merge against its sources (merge_structure)."""

    tensors_checked: int
    mismatches: list[str]  # "<tensor> differs from <source>", or a missing expert weight
    expert_non_mlp_relative_diff: list[dict[str, float]]  # per expert: tensor group -> relative norm


class ForcedRouting(Document):
    """The MoE routed fully to one expert against that expert's source model."""

    expert: int
    max_abs: float  # largest |log-prob difference|
    mean_abs: float
    kl_mean: float  # KL(source || forced MoE) per token
    perplexity_forced_moe: float
    perplexity_source: float


class Baseline(Document):
    """baseline.json: the base and each expert on the held-out windows."""

    windows_sha256: str  # of the (domain, token ids) windows
    perplexity: dict[str, dict[str, float]]  # "base" / "experts[i]" -> domain -> perplexity


class HeldOutWindows(Document):
    """Which windows a reference measured (reference.safetensors holds their token ids):
    all that the GGUF parity reads of reference.json, and all that `bench/gguf.py` writes
    beside its dense base's log-probs. The rest of a full reference is ignored here."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    domains: list[str]  # one per window
    seq_len: int


class Reference(HeldOutWindows):
    """reference.json: what verify, study, sweep and bench read of the 16-bit model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    top_k: int
    structure: MergeStructure
    forced_routing: list[ForcedRouting]
    perplexity: dict[str, dict[str, float]]  # model -> domain -> perplexity
    routing_16bit: RoutingStats  # the recipe's routers
    routing_16bit_hidden: RoutingStats | None  # mergekit's own routers, where the fit replaced them
    expert_sources: list[str]
