"""Lightning's SaveConfigCallback (config.yaml in the run folder), which also hands the resolved `model` and `data`
config to the task, so every checkpoint it saves can carry them in its run record (`medconv.tasks.run_record`)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback


class SaveRunConfig(SaveConfigCallback):
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = self.config.as_dict() if hasattr(self.config, "as_dict") else dict(self.config)
        pl_module.run_config = {"model": config.get("model"), "data": config.get("data")}
        super().setup(trainer, pl_module, stage)
