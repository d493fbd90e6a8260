"""Who reads the published AWQ folder, as measured: one list the card, verify's
`consumer_load` row and the tests share, so none of them claims a reader the others
do not. tests/test_card_snippets.py runs every reader named here on the example and
fails when what one does changes, so this text is re-measured on every upgrade."""

from __future__ import annotations

from dataclasses import dataclass

from frankenmoe.support.versions import tool_versions

# The reader that runs the folder correctly: verify's consumer_load loads with it, and
# the card's `frankenmoe generate` snippet (run by the tests) uses it.
WORKING = "frankenmoe's own loader (frankenmoe/checkpoints/streaming.py)"
# Readers of this layout by their documentation, never run here (no GPU on the build machine).
UNTESTED = ("vLLM", "TGI")


@dataclass(frozen=True)
class FailingReader:
    package: str  # the PyPI name whose installed version the measurement holds for
    version: str
    call: str
    symptom: str


FAILING = (
    FailingReader(
        "transformers",
        "5.24.0",
        "AutoModelForCausalLM.from_pretrained(folder)",
        "reports every per-expert qweight/qzeros/scales as unexpected and the fused expert weights as missing, "
        "initializes the experts at random and returns the model anyway (transformers 5 keeps a Mixtral's experts "
        "as fused tensors, which its AWQ loader does not fill)",
    ),
    FailingReader(
        "gptqmodel",
        "7.7.0",
        'GPTQModel.load(folder, device="cpu")',
        "leaves every block_sparse_moe tensor, the routers included, unused (its quantized loader does not map "
        "AutoAWQ's Mixtral names to its own) and returns NaN logits",
    ),
)


def transformers_name() -> str:
    """The reader the compressed-tensors folder is verified with, and its installed version."""
    return f"transformers {tool_versions(['transformers'])['transformers']}"


# transformers 5.24 builds its temporary per-expert module without `weight_zero_point`,
# so compressed-tensors stops on "Asymmetric quant requires zero-point values":
# measured, and pinned by tests/test_compressed.py so an upgrade that reads them is seen.
READS_ASYMMETRIC = False


def transformers_reads(zero_point: bool) -> bool:
    """Whether the pinned transformers loads compressed-tensors experts made with this setting."""
    return READS_ASYMMETRIC or not zero_point


def not_tried() -> str:
    """The readers verify's loading check did not use, for its row."""
    return ", ".join(
        [f"{r.package} {r.version} {r.call.split('(')[0]} (measured not to work)" for r in FAILING]
        + [f"{name} (untested)" for name in UNTESTED]
    )
