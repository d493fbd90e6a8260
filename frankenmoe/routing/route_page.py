"""`frankenmoe route FOLDER --text FILE`: the routing page for any published Mixtral
MoE folder (16-bit, AutoAWQ GEMM or compressed-tensors) on any text a user gives,
made as verify makes the build's own page (same windows rule, same statistics)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from frankenmoe.checkpoints.loading import LoadedLM, load_merged
from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.errors import InputFileError
from frankenmoe.measure.checks import dead_experts_check
from frankenmoe.measure.evaluation import eval_windows, routing_stats
from frankenmoe.measure.routing_page import RoutedModel, RoutedText, write_routing_page
from frankenmoe.recipe import VerifySection


@dataclass(frozen=True)
class RoutePage:
    path: Path
    size: int  # bytes
    windows: int
    tokens: int


def moe_config(folder: Path) -> dict:
    """The folder's config.json, refused unless it is a Mixtral MoE."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"route: {folder}: not a model folder (no config.json); give dist/<name>/merged or awq")
    except (OSError, ValueError):
        raise InputFileError(f"route: {path}: not a JSON object; the folder is damaged") from None
    if not isinstance(config, dict) or config.get("model_type") != "mixtral" or not config.get("num_local_experts"):
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise InputFileError(
            f"route: {folder}: not a Mixtral MoE (model_type {kind!r}); give a folder with routers, such as "
            "dist/<name>/merged, awq or w4a16"
        )
    return config


def folder_label(config: dict) -> str:
    method = (config.get("quantization_config") or {}).get("quant_method")
    return {"awq": "4-bit (AWQ)", "compressed-tensors": "4-bit (compressed-tensors)"}.get(method, "16-bit")


def expert_names(folder: Path, experts: int) -> list[str]:
    """The experts' sources as the build's verify.json names them, where the folder has one."""
    try:
        names = json.loads((folder / "verify.json").read_text(encoding="utf-8"))["routing_report"]["experts"]
        if len(names) == experts:
            return names
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return [f"expert {e}" for e in range(experts)]


def route_folder(
    folder: Path, text: Path, out: Path, seq_len: int, max_tokens: int, log: Callable[[str], None]
) -> RoutePage:
    """Run `folder` over the windows of `text` and write its routing page to `out`."""
    import torch
    from transformers import AutoTokenizer

    config = moe_config(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = eval_windows([text], tokenizer, seq_len, max_tokens, by_file_name=True)
    if not windows:
        raise InputFileError(
            f"route: {text}: shorter than one window of {seq_len + 1} tokens; give a longer text or a smaller --seq-len"
        )
    label = folder_label(config)
    log(f"route     {folder} ({label}) over {len(windows)} windows x {seq_len} tokens of {text}")
    lm = LoadedLM(load_merged(folder)) if label == "4-bit (compressed-tensors)" else StreamingLM(folder)
    routers = [router for _, router in lm.run([ids[:-1] for _, ids in windows], desc="route")]
    router = torch.cat(routers, dim=1)
    domains = [d for d, _ in windows]
    top_k = config.get("num_experts_per_tok", 2)
    routing = routing_stats(router, domains, seq_len, top_k)
    names = expert_names(folder, config["num_local_experts"])
    dead = dead_experts_check(VerifySection(), routing, names, "this text's")
    out.parent.mkdir(parents=True, exist_ok=True)
    size = write_routing_page(
        out,
        f"{folder.parent.name}/{folder.name}",
        names,
        top_k,
        RoutedText.decode(tokenizer, windows),
        [RoutedModel(label, router, routing)],
        dead=dead,
    )
    return RoutePage(out, size, len(windows), router.shape[1])
