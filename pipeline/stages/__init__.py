"""The stages, in build order. A new stage is a module here and one line below."""

from pipeline.stages.baseline import BaselineStage
from pipeline.stages.card import CardStage
from pipeline.stages.compressed import CompressedStage
from pipeline.stages.evals import EvalsStage
from pipeline.stages.evaluate import EvaluateStage
from pipeline.stages.gates import GatesStage
from pipeline.stages.gguf import GgufStage
from pipeline.stages.lock import LockStage
from pipeline.stages.manifest import ManifestStage
from pipeline.stages.merge import MergeStage
from pipeline.stages.push import PushStage
from pipeline.stages.quantize import QuantizeStage
from pipeline.stages.resolve import ResolveStage
from pipeline.stages.verify import VerifyStage

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
    PushStage(),
)
STAGE_NAMES = [s.name for s in STAGES]
