"""The stages, in build order. A new stage is a module here and one line below."""

from frankenmoe.stages.baseline import BaselineStage
from frankenmoe.stages.card import CardStage
from frankenmoe.stages.compressed import CompressedStage
from frankenmoe.stages.evals import EvalsStage
from frankenmoe.stages.evaluate import EvaluateStage
from frankenmoe.stages.gates import GatesStage
from frankenmoe.stages.gguf import GgufStage
from frankenmoe.stages.lock import LockStage
from frankenmoe.stages.manifest import ManifestStage
from frankenmoe.stages.merge import MergeStage
from frankenmoe.stages.quantize import QuantizeStage
from frankenmoe.stages.resolve import ResolveStage
from frankenmoe.stages.verify import VerifyStage

STAGES = (
    LockStage(),
    ResolveStage(),
    MergeStage(),
    GatesStage(),
    QuantizeStage(),
    BaselineStage(),
    EvaluateStage(),
    VerifyStage(),
    CompressedStage(),
    GgufStage(),
    EvalsStage(),
    CardStage(),
    ManifestStage(),
)
STAGE_NAMES = [s.name for s in STAGES]
