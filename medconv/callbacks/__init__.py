"""Callbacks that write a run's files: evaluation reports and ROC/reliability plots (RunOutputs), predictions (PredictionCSVWriter;
BagPredictionWriter for MIL), pretrained encoders (EncoderExport), SSL monitors (RepresentationProbe, MaskPreview)."""

from medconv.callbacks.bag_predictions import BagPredictionWriter
from medconv.callbacks.encoder_export import EncoderExport
from medconv.callbacks.files import run_dir
from medconv.callbacks.mask_preview import MaskPreview
from medconv.callbacks.outputs import RunOutputs
from medconv.callbacks.predictions import PredictionCSVWriter
from medconv.callbacks.probe import RepresentationProbe

RunSummary = RunOutputs  # the name configs saved before 0.2 use (docs/migration.md)

__all__ = ["BagPredictionWriter", "EncoderExport", "MaskPreview", "PredictionCSVWriter", "RepresentationProbe", "RunOutputs",
           "RunSummary", "run_dir"]
