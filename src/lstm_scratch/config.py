"""Training configuration: one dataclass, named presets, and validation with one-line errors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ConfigError
from .model import ModelConfig


@dataclass
class TrainConfig:
    # data
    data: str | None = None  # a UTF-8 text file; None: the built-in Hamlet passage
    encoding: str = "utf-8"
    lower: bool = False
    val_fraction: float = 0.1  # the last 10 % of the text, as nanoGPT
    max_vocab: int | None = None  # keep the most frequent characters, the rest in one bucket
    # model
    hidden_size: int = 128
    num_layers: int = 2
    embed_size: int = 32  # 0: one-hot input
    dropout: float = 0.0
    init: str = "pytorch"
    forget_bias: float | None = None
    dtype: str = "float32"
    backend: str = "auto"  # "numpy" (the reference), "numba" (compiled time loops), "auto"
    # optimisation
    batch_size: int = 32
    seq_len: int = 64
    steps: int | None = None  # steps or epochs; neither: 1000 steps
    epochs: float | None = None
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: str = "constant"  # "constant", "cosine" (with warmup) or "step"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    step_size: int = 1000
    gamma: float = 0.5
    grad_clip: float | None = 5.0  # clip the global gradient norm
    clip_value: float | None = None  # clip each gradient entry to ±clip_value (the notebook)
    loss_reduction: str = "mean"  # "sum": the notebook's summed loss
    # the run
    seed: int = 0
    eval_every: int = 200
    checkpoint_every: int | None = None  # default: at every evaluation
    patience: int | None = None  # early stopping after this many evaluations without improvement
    time_limit: float | None = None  # minutes
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: "stop", or "skip" the batch
    preset: str | None = None

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size,
            self.hidden_size,
            self.num_layers,
            self.embed_size,
            self.dropout,
            self.init,
            self.forget_bias,
            self.dtype,
        )


PRESETS: dict[str, dict] = {
    # The original notebook: one layer of 25, one-hot input, Xavier init, plain SGD at 0.05 on the
    # summed loss, each gradient entry clipped to ±1, the whole passage as one BPTT window,
    # 1000 epochs, float64, no held-out text (it is tested on what it memorised).
    "hamlet": dict(
        hidden_size=25,
        num_layers=1,
        embed_size=0,
        init="xavier",
        optimizer="sgd",
        lr=0.05,
        grad_clip=None,
        clip_value=1.0,
        loss_reduction="sum",
        batch_size=1,
        seq_len=865,
        epochs=1000,
        val_fraction=0.0,
        eval_every=50,  # an evaluation is one forward pass, about 1 ms here
        checkpoint_every=250,
        dropout=0.0,
        dtype="float64",  # NumPy's default, which the notebook computed in
    ),
    # Tiny-shakespeare-sized text on a 2-core CPU in 15 minutes: one layer of 512 fed by a
    # 64-wide embedding (about 1.2M parameters), batches of 64 × 64 characters, AdamW with a
    # cosine schedule sized to the ~2,400 steps that 15 minutes allow here (9.6k chars/s), light
    # dropout, an evaluation about every minute. Stops at the time limit or the last step.
    "shakespeare": dict(
        hidden_size=512,
        num_layers=1,
        embed_size=64,
        dropout=0.1,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.01,
        schedule="cosine",
        warmup_steps=100,
        min_lr_ratio=0.05,
        steps=2400,
        batch_size=64,
        seq_len=64,
        grad_clip=5.0,
        eval_every=150,
        time_limit=15.0,
        dtype="float32",
    ),
}

#: a run's length is given in steps or in epochs: a value given for one replaces the other's
LENGTH_TWINS = {"steps": "epochs", "epochs": "steps"}

RESUME_OVERRIDABLE = (
    "on_nonfinite",
    "steps",
    "epochs",
    "time_limit",
    "eval_every",
    "checkpoint_every",
    "patience",
    "backend",
)


def make_config(preset: str | None = None, **options) -> TrainConfig:
    """TrainConfig defaults, then the preset's values, then ``options`` (unknown names rejected).

    An option overrides the preset's value of the same setting, and ``steps`` or ``epochs``
    also drops the preset's value of the other (``LENGTH_TWINS``).
    """
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    for given, twin in LENGTH_TWINS.items():  # --steps replaces a preset's epochs, and back
        if given in options and twin not in options:
            values.pop(twin, None)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
    values.update(options)
    config = TrainConfig(preset=preset, **values)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    positive = [
        "hidden_size",
        "num_layers",
        "batch_size",
        "seq_len",
        "eval_every",
        "steps",
        "checkpoint_every",
        "patience",
        "step_size",
        "max_vocab",
    ]
    for name in positive:
        value = getattr(config, name)
        if value is not None and (int(value) != value or value < 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for name in ("lr", "epochs", "time_limit", "grad_clip", "clip_value"):
        value = getattr(config, name)
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be positive and finite, got {value}"
            )
    if config.embed_size < 0 or config.warmup_steps < 0 or config.weight_decay < 0:
        raise ConfigError("--embed-size, --warmup-steps and --weight-decay must be >= 0")
    if config.max_vocab is not None and config.max_vocab < 2:
        raise ConfigError(f"--max-vocab must be at least 2, got {config.max_vocab}")
    if not 0 <= config.dropout < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {config.dropout}")
    if not 0 <= config.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    if config.steps is not None and config.epochs is not None:
        raise ConfigError("give --steps or --epochs, not both")
    choices = {
        "init": ("pytorch", "xavier"),
        "dtype": ("float32", "float64"),
        "loss_reduction": ("mean", "sum"),
        "backend": ("auto", "numpy", "numba"),
        "on_nonfinite": ("stop", "skip"),
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"unknown {name} {getattr(config, name)!r}: choose from {allowed}")
