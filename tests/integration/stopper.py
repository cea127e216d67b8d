"""A callback that stops training after a given epoch, as an interruption would (used by the resume test)."""

import lightning as L


class StopAfterEpoch(L.Callback):
    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch >= self.epoch:
            trainer.should_stop = True
