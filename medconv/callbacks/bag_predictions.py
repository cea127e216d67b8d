"""`medconv predict` output for MIL: one row per slide in predictions.csv, and per slide an HDF5 file with the
tiles' coords and attention (and CLAM's instance logits) in the CLAM/TRIDENT layout, for heatmaps and QuPath.
`medconv predict` puts it in place of `PredictionCSVWriter` for a MIL run."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from medconv import keys
from medconv.callbacks.files import run_dir, write_predictions
from medconv.io.atomic import atomic_path

PER_SLIDE = ("attention", keys.COORDS, "instance_logits")


class BagPredictionWriter(BasePredictionWriter):
    """predictions.csv (probabilities + ids per slide) and `attention/<slide_id>.h5` with datasets `attention` (N,),
    `coords` (N, 2) level-0 when the bags have them, `instance_logits` (N, C) when the aggregator gives them."""

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:  # type: ignore[override]
        out_dir = Path(self.output_dir) if self.output_dir else run_dir(trainer)
        columns: dict = {}
        for batch in predictions:
            for key, value in batch.items():
                if value is not None and key not in PER_SLIDE:
                    columns.setdefault(key, []).append(value.numpy() if hasattr(value, "numpy") else np.asarray(value))
            for i, slide in enumerate(batch[keys.SLIDE_ID]):
                self.write_slide(out_dir / "attention" / f"{slide}.h5", {k: batch[k][i] for k in PER_SLIDE if batch.get(k) is not None})
        rows = {k: np.concatenate(v) for k, v in columns.items()}
        if keys.LABEL in rows:
            rows["labels"] = rows.pop(keys.LABEL)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        classes = getattr(trainer.datamodule, "classes", None) if trainer.datamodule is not None else None
        write_predictions(rows, out_dir / name, classes)
        print(f"medconv: slide predictions written to {out_dir / name}, attention per slide under {out_dir / 'attention'}")

    @staticmethod
    def write_slide(path: Path, arrays: dict[str, np.ndarray]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for name, value in arrays.items():
                f.create_dataset(name, data=np.asarray(value))
