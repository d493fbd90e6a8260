"""The stages, in build order. A new stage is a module here and one line below."""

from pipeline.stages.merge import MergeStage
from pipeline.stages.quantize import QuantizeStage
from pipeline.stages.resolve import ResolveStage

STAGES = [ResolveStage(), MergeStage(), QuantizeStage()]
