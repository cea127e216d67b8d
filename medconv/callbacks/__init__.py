"""Callbacks that write a run's files: evaluation reports and plots (RunOutputs) and predictions (PredictionCSVWriter)."""

from medconv.callbacks.files import run_dir
from medconv.callbacks.outputs import RunOutputs
from medconv.callbacks.predictions import PredictionCSVWriter

RunSummary = RunOutputs  # the name configs saved before 0.2 use (docs/migration.md)

__all__ = ["PredictionCSVWriter", "RunOutputs", "RunSummary", "run_dir"]
