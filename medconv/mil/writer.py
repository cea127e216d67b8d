"""Old home of `BagPredictionWriter`, now `medconv.callbacks.BagPredictionWriter`: the class path that `medconv predict`
configs saved before the move name still resolves, with a FutureWarning (docs/migration.md)."""

from __future__ import annotations

import importlib
import warnings


def __getattr__(name: str):
    if name == "BagPredictionWriter":
        warnings.warn("medconv.mil.writer.BagPredictionWriter moved to medconv.callbacks.BagPredictionWriter; update the "
                      "config's class_path", FutureWarning, stacklevel=2)
        return importlib.import_module("medconv.callbacks").BagPredictionWriter
    raise AttributeError(f"module 'medconv.mil.writer' has no attribute {name!r}")
