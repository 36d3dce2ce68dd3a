"""User-facing errors: the CLI prints ``str(error)`` on one line and exits with code 2."""


class LstmScratchError(Exception):
    """Base class of every error caused by user input (files, options, checkpoints)."""


class DataError(LstmScratchError):
    """A text file that cannot be used for training or evaluation."""


class CheckpointError(LstmScratchError):
    """A checkpoint that is missing, foreign, corrupt or of another format version."""


class ConfigError(LstmScratchError):
    """An option value that cannot work (non-positive size, unknown optimizer, ...)."""


class TrainingError(LstmScratchError):
    """Training cannot go on (a NaN or inf loss); the last good checkpoint is kept."""
