"""Parameter counts from a config (frankenmoe/checkpoints/shape.py) against real models."""

from __future__ import annotations

import json

from bench.synthetic import SHAPES
from frankenmoe.checkpoints.shape import ModelShape
from frankenmoe.checkpoints.sources import safetensors_header
from tests.conftest import REPO

MISTRAL_7B = {**SHAPES["7b"], "tie_word_embeddings": False}


def _stored_params(folder) -> int:
    """Parameters in a model folder's safetensors files, from their headers."""
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        for name, meta in safetensors_header(f).items():
            if name != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                total += n
    return total


def test_smollm2_135m_parameter_count_is_the_real_models():
    from frankenmoe.example.catalog import ensure_example

    base = ensure_example("smollm2", REPO / "fixtures", log=lambda _: None) / "base"
    shape = ModelShape.of(json.loads((base / "config.json").read_text()))
    assert shape.tied and shape.head_dim == 64
    assert shape.params() == _stored_params(base) == 134_515_008  # tied: lm_head is the embedding matrix
    assert shape.bytes() == sum(f.stat().st_size for f in base.glob("*.safetensors")) - _header_bytes(base)


def _header_bytes(folder) -> int:
    out = 0
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            out += 8 + int.from_bytes(fh.read(8), "little")
    return out


def test_mistral_7b_and_mixtral_8x7b_shapes_give_their_published_counts():
    shape = ModelShape.of(MISTRAL_7B)
    assert shape.head_dim == 128 and not shape.tied
    assert shape.params() == 7_241_732_096  # Mistral-7B-v0.1
    assert shape.params(experts=8) == 46_702_792_704  # Mixtral-8x7B: its experts and routers on the same shape
    assert shape.bytes(experts=8, dtype="float32") == 4 * 46_702_792_704
