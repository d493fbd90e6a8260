"""The routing page: held-out text with every token coloured by the expert its router
chose, at a layer the reader picks, for the 16-bit model and (where verify ran one)
the 4-bit one.

One self-contained HTML file (`routing.html`; script and style inline, no network).
Its tables are verify.json's numbers as they are (routing_report, the routing parity
and dead-expert checks); its token colours come from the same router arrays and the
same `chosen_experts` rule those numbers were computed with.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from frankenmoe.measure.evaluation import chosen_experts

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "routing.html"


def template_sha256() -> str:
    """The page's template, for the keys of the stages that write it: an edited page is rebuilt."""
    return hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()


@dataclass(frozen=True)
class RoutedText:
    """Text as the routers saw it: per window its domain and its routed tokens, each
    decoded on its own (the router arrays hold one row per token, window after window)."""

    domains: list[str]
    tokens: list[list[str]]

    @classmethod
    def decode(cls, tokenizer, windows: list[tuple[str, list[int]]]) -> RoutedText:
        """`windows` as evaluate stores them (domain, ids): the model reads ids[:-1]."""
        return cls(
            [d for d, _ in windows],
            [tokenizer.batch_decode([[i] for i in ids[:-1]]) for _, ids in windows],
        )


@dataclass(frozen=True)
class RoutedModel:
    """One model's routing of the text: a label, its router softmax [L, T, E], and
    its routing_stats as verify.json records them."""

    label: str
    router: object  # torch.Tensor [L, T, E]
    routing: dict


def _packed(router, top_k: int) -> dict:
    """Each token's top-k experts (heaviest first) and their renormalized gate weights
    as bytes (weight x 255), layer after layer, base64: compact enough for 30 layers
    x 4096 tokens in a page under 2 MB."""
    import torch

    indices, weights = chosen_experts(router.float(), top_k)
    as_bytes = lambda t: base64.b64encode(t.to(torch.uint8).contiguous().numpy().tobytes()).decode()
    return {"indices": as_bytes(indices), "weights": as_bytes((weights * 255).round())}


def render_routing_page(
    title: str,
    experts: list[str],
    top_k: int,
    text: RoutedText,
    models: list[RoutedModel],
    changes: dict | None = None,
    dead: dict | None = None,
) -> str:
    """The page. `changes`: verify's per-layer counts of tokens the second model routes
    elsewhere (tokens_topk_changed, tokens_top1_changed); `dead`: verify's dead-expert
    check record."""
    layers, tokens, _ = models[0].router.shape
    if tokens != sum(len(t) for t in text.tokens):
        raise ValueError(f"router arrays hold {tokens} tokens, the text {sum(len(t) for t in text.tokens)}")
    payload = {
        "title": title,
        "experts": experts,
        "top_k": top_k,
        "layers": layers,
        "domains": sorted(set(text.domains)),
        "windows": [{"domain": d, "tokens": t} for d, t in zip(text.domains, text.tokens)],
        "models": [{"label": m.label, "routing": m.routing, **_packed(m.router, top_k)} for m in models],
        "changes": changes,
        "dead": dead,
    }
    from jinja2 import Template

    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return Template(TEMPLATE.read_text(encoding="utf-8"), autoescape=True).render(title=title, data=data)


def write_routing_page(path: Path, *args, **kwargs) -> int:
    """Write the page; its size in bytes (the card states it)."""
    html = render_routing_page(*args, **kwargs)
    path.write_text(html, encoding="utf-8")
    return len(html.encode())
