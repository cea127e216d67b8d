"""Errors a user can cause and fix. The CLI prints them as one clear message, without a traceback."""


class MedconvError(Exception):
    """Base: the message names the file or key at fault and what to do about it."""


class InputFileError(MedconvError):
    """A file is missing, truncated, corrupt, unsupported, or lacks required metadata."""


class ManifestError(MedconvError):
    """A manifest has problems; the message lists all of them at once."""


class ConfigError(MedconvError):
    """A config value is inconsistent with the data or the model."""


class CheckpointError(MedconvError):
    """A checkpoint is missing, cannot be resolved inside a run, or holds more than weights."""


class PretrainedWeightsError(MedconvError):
    """Pretrained weights named by a model name cannot be had: not in the Hugging Face cache while offline, a gated or
    missing repository, no network. The message names the hub id, the cache searched and how to fix it."""
