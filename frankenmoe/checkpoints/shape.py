"""A Llama/Mistral model's shape from its config.json: the one place parameter and
byte counts are derived from a config (merge's disk estimate, verify's size tiers,
the AWQ layout's linears), so they cannot disagree about `head_dim` or tied
embeddings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int  # config `head_dim`, else hidden / heads (SmolLM2 states it; Mistral-7B does not)
    vocab: int
    tied: bool  # one embedding matrix serves as lm_head

    @classmethod
    def of(cls, config: dict) -> ModelShape:
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def attention_width(self) -> int:
        """Input width of o_proj (output of q_proj): heads x head_dim."""
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def attention_params(self) -> int:
        """q, k, v, o projections of one layer (no biases)."""
        return 2 * self.hidden * self.attention_width + 2 * self.hidden * self.kv_width

    def mlp_params(self) -> int:
        """gate, up and down projections of one MLP (one expert)."""
        return 3 * self.hidden * self.intermediate

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self, experts: int = 0) -> int:
        """Parameters of the dense model (`experts` 0) or of a Mixtral MoE of it with
        `experts` MLPs per layer and a router [experts, hidden] per layer: embeddings,
        per layer attention + MLP(s) + two norms, and the final norm."""
        mlps = max(experts, 1) * self.mlp_params() + experts * self.hidden
        return self.embedding_params() + self.layers * (self.attention_params() + mlps + 2 * self.hidden) + self.hidden

    def bytes(self, experts: int = 0, dtype: str | None = "float16") -> int:
        """Size of the weights on disk: 4 bytes a parameter in float32, else 2."""
        return self.params(experts) * (4 if dtype == "float32" else 2)
