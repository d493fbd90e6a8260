"""Finding a source model on disk and checking that it is usable, before any heavy work.

A model reference is a local folder (used in place) or a Hub repo id, fetched with
huggingface_hub's `snapshot_download` (pinned `revision`, only the files a merge
needs, `HF_HUB_OFFLINE` honoured). The checks read only config files and
safetensors headers, so they take seconds even for 7B models.
"""

from __future__ import annotations

import fnmatch
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from frankenmoe.errors import IncompatibleModelsError, InputFileError
from frankenmoe.support.paths import resolve_path

# Everything a merge reads from a source; weights only as safetensors.
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "README.md",  # for the license its card states
]
SUPPORTED_MODEL_TYPES = ("llama", "mistral")
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")


class ModelRef(Protocol):
    """A model reference as the recipe gives it (frankenmoe.recipe.ModelRef), read here
    without this layer importing the recipe."""

    id: str
    revision: str | None

    def display(self) -> str: ...
    def local_path(self, root: Path) -> Path: ...
    def looks_like_hub_id(self, root: Path) -> bool: ...


@dataclass(frozen=True)
class LocatedModel:
    role: str
    ref: ModelRef
    path: Path
    commit: str | None  # resolved Hub commit SHA; None for local folders


def locate(role: str, ref: ModelRef, root: Path, download: bool = True) -> LocatedModel | None:
    """The local folder holding `ref` (relative to `root`, the recipe's folder);
    downloads Hub ids unless `download` is False (then returns None when the files
    are not already in the local Hub cache)."""
    if ref.revision and resolve_path(ref.display(), root).is_dir():
        # A folder whose name has an '@' (mergekit's org/name@revision form split it).
        return LocatedModel(role, ref, resolve_path(ref.display(), root).resolve(), None)
    local = ref.local_path(root)
    if local.is_dir():
        if ref.revision:
            raise InputFileError(f"{role}: {ref.id} is a local folder; `revision` only applies to Hub ids")
        return LocatedModel(role, ref, local.resolve(), None)
    if not ref.looks_like_hub_id(root):
        raise InputFileError(f"{role}: {ref.id}: no such folder, and not a Hub id of the form org/name")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(
            ref.id, revision=ref.revision, allow_patterns=ALLOW_PATTERNS, local_files_only=not download
        )
    except LocalEntryNotFoundError:
        if not download:
            return None
        raise InputFileError(
            f"{role}: {ref.display()} is not a local folder and is not available from the Hub "
            "(offline, or not in the local cache); connect, or run `huggingface-cli download` first"
        ) from None
    except RevisionNotFoundError:
        raise InputFileError(f"{role}: revision {ref.revision!r} not found in {ref.id}") from None
    except GatedRepoError:
        raise InputFileError(
            f"{role}: {ref.id} is gated; accept its terms on the Hub and log in (huggingface-cli login)"
        ) from None
    except RepositoryNotFoundError:
        raise InputFileError(
            f"{role}: {ref.id} not found on the Hub (or private: log in with huggingface-cli login)"
        ) from None
    except HfHubHTTPError as e:
        raise InputFileError(
            f"{role}: could not download {ref.display()}: HTTP {getattr(e.response, 'status_code', '?')}"
        ) from None
    snapshot = Path(path)
    return LocatedModel(role, ref, snapshot, snapshot.name)


def model_files(path: Path) -> list[Path]:
    """The files of a model folder that a merge reads."""
    return sorted(
        p for p in path.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in ALLOW_PATTERNS)
    )


def card_facts(model: LocatedModel) -> dict:
    """What the source's model card states: its license, the model it derives from
    (`base_model`) and its first paragraph of text (where it says how it was made)."""
    readme = model.path / "README.md"
    if not readme.is_file():
        return {"license": None, "derived_from": None, "about": None}
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(readme.read_text(encoding="utf-8", errors="replace"))
    except Exception:  # a card the Hub would not parse states nothing usable
        return {"license": None, "derived_from": None, "about": None}
    derived = card.data.base_model
    paragraphs = [
        p.strip() for p in card.text.split("\n\n") if p.strip() and not p.lstrip().startswith(("#", "|", "```"))
    ]
    about = " ".join(paragraphs[0].split())[:400] if paragraphs else None
    return {"license": card.data.license, "derived_from": derived if isinstance(derived, str) else None, "about": about}


def read_config(model: LocatedModel) -> dict:
    cfg_file = model.path / "config.json"
    if not cfg_file.is_file():
        raise InputFileError(f"{model.role}: {cfg_file} is missing; a model folder needs its config.json")
    try:
        return json.loads(cfg_file.read_text())
    except ValueError as e:
        raise InputFileError(f"{model.role}: {cfg_file} is not valid JSON ({e})") from None


def safetensors_header(file: Path) -> dict:
    """The header of a safetensors file, after checking that the file is complete."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100_000_000:
                raise ValueError("header length beyond end of file")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise InputFileError(f"{file}: not a valid safetensors file ({e}); download it again") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise InputFileError(
            f"{file}: truncated or corrupt safetensors file ({size} bytes, header expects {8 + n + end}); download "
            "it again"
        )
    return header


def weight_files(model: LocatedModel) -> list[Path]:
    files = sorted(model.path.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in model.path.glob("*.bin")) or sorted(p.name for p in model.path.glob("*.pt"))
        if bins:
            raise InputFileError(
                f"{model.role}: {model.path} has only PyTorch .bin weights ({bins[0]}); frankenmoe reads safetensors "
                "only "
                "(pickle files can run code). Convert it, e.g. with transformers: "
                "AutoModelForCausalLM.from_pretrained(p).save_pretrained(p, safe_serialization=True)"
            )
        raise InputFileError(f"{model.role}: no *.safetensors weights in {model.path}")
    return files


def check_configs(models: list[LocatedModel], trust_remote_code: bool) -> dict[str, dict]:
    """What the config.json files alone decide (the base first): no custom code
    unless allowed, a Llama/Mistral model_type, the base's SHAPE_FIELDS. Every
    problem at once, each naming the models and the field; returns the configs.
    Seconds and no weights, so it runs at preflight as well as in `resolve`."""
    configs = {m.role: read_config(m) for m in models}
    problems = []
    for m in models:
        cfg = configs[m.role]
        if cfg.get("auto_map") and not trust_remote_code:
            problems.append(
                f"{m.role}: {m.ref.display()} needs custom code (auto_map in config.json); "
                "set `trust_remote_code: true` in the recipe if you trust it"
            )
        mt = cfg.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            problems.append(
                f"{m.role}: {m.ref.display()} has model_type {mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)} "
                "(Llama/Mistral family)"
            )
    base = models[0]
    for m in models[1:]:
        for field in SHAPE_FIELDS:
            a, b = configs[base.role].get(field), configs[m.role].get(field)
            if a != b:
                problems.append(
                    f"{field} differs: {base.role} {base.ref.display()} has {a}, {m.role} {m.ref.display()} has {b}"
                )
    if problems:
        raise IncompatibleModelsError(problems)
    return configs


def preflight(models: list[LocatedModel], trust_remote_code: bool) -> dict[str, dict]:
    """Check that the base and experts can be merged; return each model's summary.

    Clear errors naming both models and the field, before any weights are read:
    the configs (check_configs), complete safetensors files, one tokenizer."""
    configs = check_configs(models, trust_remote_code)
    summaries: dict[str, dict] = {}
    for m in models:
        cfg = configs[m.role]
        tensors = 0
        for f in weight_files(m):
            tensors += len([k for k in safetensors_header(f) if k != "__metadata__"])
        summaries[m.role] = {
            "model_type": cfg.get("model_type"),
            **{k: cfg.get(k) for k in SHAPE_FIELDS},
            "num_attention_heads": cfg.get("num_attention_heads"),
            "num_key_value_heads": cfg.get("num_key_value_heads", cfg.get("num_attention_heads")),
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
            "tensors": tensors,
        }
    for m in models[1:]:
        _compare_tokenizers(models[0], m)
    return summaries


def _tokenizer_identity(model: LocatedModel) -> dict:
    """What decides how text becomes ids: the vocabulary and merges (not the chat template)."""
    tj = model.path / "tokenizer.json"
    if tj.is_file():
        data = json.loads(tj.read_text(encoding="utf-8"))
        m = data.get("model", {})
        added = sorted((t["id"], t["content"]) for t in data.get("added_tokens", []))
        return {"vocab": m.get("vocab"), "merges": m.get("merges"), "added_tokens": added}
    ident = {}
    for name in TOKENIZER_FILES[1:]:
        f = model.path / name
        if f.is_file():
            ident[name] = f.read_bytes()
    if not ident:
        raise InputFileError(f"{model.role}: {model.path} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return ident


def _compare_tokenizers(base: LocatedModel, other: LocatedModel) -> None:
    a, b = _tokenizer_identity(base), _tokenizer_identity(other)
    for part in sorted(set(a) | set(b)):
        if a.get(part) != b.get(part):
            raise IncompatibleModelsError(
                f"tokenizer differs ({part}): {base.role} {base.ref.display()} and {other.role} {other.ref.display()} "
                "must share one tokenizer, or the experts will read different token ids"
            )
