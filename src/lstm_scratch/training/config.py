"""Training configuration: one dataclass, named presets, and validation with one-line errors.

TrainConfig is the one place a training setting is written: its default, and in the field's
metadata the sentence, the --help group and the choices from which the command line builds its
flag (app/cli.py); the optimizer, the schedule and the model take their settings from it by name
(``TrainConfig.pick``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from lstm_scratch.errors import ConfigError
from lstm_scratch.model.backend import BACKENDS
from lstm_scratch.model.charlm import CELLS, ModelConfig
from lstm_scratch.model.tokens import DEFAULT_SIZE, TOKENIZERS
from lstm_scratch.training.optim import OPTIMIZERS, SCHEDULES

GROUPS = ("data", "model", "optimisation", "the run")  # the sections of `train --help`


def setting(group: str, default, help: str, *, choices=None, shown=None, metavar=None):
    """A TrainConfig field: its ``default``, and for the command line the ``help`` sentence,
    the --help ``group``, the allowed ``choices``, how the default reads when it is not just its
    value (``shown``) and the value's name in the usage line (``metavar``)."""
    assert group in GROUPS, group
    metadata = dict(group=group, help=help, choices=choices, shown=shown, metavar=metavar)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    data: str | None = setting(
        "data",
        None,
        "the text file to train on, read in --encoding",
        shown="the built-in Hamlet passage",
        metavar="FILE",
    )
    encoding: str = setting("data", "utf-8", "the text file's encoding", metavar="NAME")
    lower: bool = setting("data", False, "lowercase the text before training")
    val_fraction: float = setting(
        "data",
        0.1,
        "the share of the text, at its end, held out for validation (as nanoGPT); 0 validates "
        "on the training text",
    )
    max_vocab: int | None = setting(
        "data",
        None,
        "keep the K-1 most frequent characters and one bucket for all the others",
        shown="every character",
        metavar="K",
    )
    tokenizer: str = setting(
        "data",
        "char",
        "what a token is: char, one character; word, a word, a run of whitespace or a "
        "symbol; bpe, byte-pair merges of characters (Hugging Face tokenizers, trained on the "
        "training text). Losses are per character whatever the tokens",
        choices=TOKENIZERS,
    )
    vocab_size: int | None = setting(
        "data",
        None,
        "how many word or bpe tokens to learn, [UNK] included",
        shown=f"{DEFAULT_SIZE['word']} for word, {DEFAULT_SIZE['bpe']} for bpe",
        metavar="N",
    )
    cell: str = setting(
        "model",
        "lstm",
        "the recurrent layers: lstm, gru (torch.nn.GRU's) or rnn (an Elman RNN with tanh)",
        choices=tuple(CELLS),
    )
    hidden_size: int = setting("model", 128, "units in each recurrent layer")
    num_layers: int = setting("model", 2, "stacked recurrent layers")
    embed_size: int = setting(
        "model", 32, "the width of the character embedding; 0 feeds one-hot vectors"
    )
    dropout: float = setting(
        "model",
        0.0,
        "the dropout probability on the input of layers 2..L and on the last layer's output",
    )
    init: str = setting(
        "model",
        "pytorch",
        "weight initialisation: pytorch, uniform in ±1/sqrt(H) as torch.nn's; or xavier, per "
        "gate with zero biases, as the original notebook",
        choices=("pytorch", "xavier"),
    )
    forget_bias: float | None = setting(
        "model",
        None,
        "set an LSTM's forget gates' initial bias to this value",
        shown="as --init sets it",
    )
    dtype: str = setting(
        "model",
        "float32",
        "the precision of weights, gradients and activations",
        choices=("float32", "float64"),
    )
    backend: str = setting(
        "model",
        "auto",
        "numba: compiled time loops; numpy: the reference; auto: chosen by the model's size",
        choices=BACKENDS,
    )
    batch_size: int = setting("optimisation", 32, "rows of text trained on side by side")
    seq_len: int = setting("optimisation", 64, "characters per truncated-BPTT window")
    steps: int | None = setting(
        "optimisation",
        None,
        "train for N steps; replaces a preset's --epochs",
        shown="1000, unless --epochs is given",
    )
    epochs: float | None = setting(
        "optimisation",
        None,
        "train for X passes over the training text, fractions allowed; replaces a preset's --steps",
        shown="none, the run counts --steps",
    )
    optimizer: str = setting(
        "optimisation",
        "adamw",
        "the optimizer, updating as torch.optim's does",
        choices=OPTIMIZERS,
    )
    lr: float = setting("optimisation", 2e-3, "the base learning rate, the schedule's peak")
    weight_decay: float = setting(
        "optimisation", 0.0, "weight decay: added to the gradient (sgd, adam) or decoupled (adamw)"
    )
    momentum: float = setting("optimisation", 0.0, "sgd's momentum")
    schedule: str = setting(
        "optimisation",
        "constant",
        "the learning-rate schedule after warmup: constant, cosine (down to --min-lr-ratio at "
        "the last step) or step (times --gamma every --step-size steps)",
        choices=SCHEDULES,
    )
    schedule_by: str = setting(
        "optimisation",
        "steps",
        "what the cosine schedule follows: steps (of --steps or --epochs), or time, the run's "
        "elapsed time toward --time-limit, so that it ends its decay at the limit on any host; "
        "with time and neither --steps nor --epochs, the run lasts until the limit",
        choices=("steps", "time"),
    )
    warmup_steps: int = setting(
        "optimisation", 0, "steps of linear warmup up to --lr, before the schedule"
    )
    min_lr_ratio: float = setting(
        "optimisation", 0.1, "the cosine schedule's final rate, as a fraction of --lr"
    )
    step_size: int = setting("optimisation", 1000, "the step schedule's steps between decays")
    gamma: float = setting("optimisation", 0.5, "the step schedule's factor at each decay")
    grad_clip: float | None = setting(
        "optimisation", 5.0, "clip the global gradient norm to this", metavar="NORM"
    )
    clip_value: float | None = setting(
        "optimisation",
        None,
        "clip each gradient entry into [-X, X], as the original notebook",
        shown="no clipping",
    )
    loss_reduction: str = setting(
        "optimisation",
        "mean",
        "mean: the loss per character; sum: the loss summed over the batch, as the notebook",
        choices=("mean", "sum"),
    )
    seed: int = setting(
        "the run", 0, "seeds the initial weights and the dropout masks: same seed, same run"
    )
    eval_every: int = setting(
        "the run", 200, "evaluate on the held-out text every N steps, and at the last step"
    )
    checkpoint_every: int | None = setting(
        "the run", None, "save a checkpoint every N steps", shown="at every evaluation"
    )
    patience: int | None = setting(
        "the run", None, "stop early after N evaluations without improvement", shown="never"
    )
    time_limit: float | None = setting(
        "the run",
        None,
        "evaluate, save and stop after this many minutes of this call",
        shown="none",
        metavar="MINUTES",
    )
    on_nonfinite: str = setting(
        "the run",
        "stop",
        "a NaN or infinite loss or gradient: stop, or skip the batch",
        choices=("stop", "skip"),
    )
    preset: str | None = setting(
        "data",
        None,
        "start from a named set of settings, which the flags given replace: hamlet, the "
        "original notebook's run, or shakespeare, which needs --data",
        shown="hamlet without --data, none with it",
        metavar="NAME",
    )

    def pick(self, kind: type, **extra):
        """A ``kind`` dataclass (ModelConfig, OptimizerConfig, ScheduleConfig) holding this
        config's settings of the same names, then ``extra``; its other fields keep defaults."""
        mine = {f.name for f in dataclasses.fields(self)}
        names = [f.name for f in dataclasses.fields(kind) if f.name in mine and f.name not in extra]
        return kind(**{name: getattr(self, name) for name in names}, **extra)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return self.pick(ModelConfig, vocab_size=vocab_size)


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
    # Tiny-shakespeare-sized text on a 2-core CPU in 15 minutes: two LSTM layers of 512 fed by a
    # 64-wide embedding (about 3.3M parameters), dropout 0.3 between the layers and before the
    # output, batches of 32 × 64 characters, AdamW at 3e-3 with a cosine that follows the
    # elapsed time to the 15-minute limit (so it decays fully on any host, and the run lasts
    # until the limit), an evaluation every 300 steps (about 1.4 minutes here). The recipe
    # search behind it is in docs/shakespeare.md: one layer of 512 overfits within 8 minutes,
    # bpe tokens overfit sooner.
    "shakespeare": dict(
        hidden_size=512,
        num_layers=2,
        embed_size=64,
        dropout=0.3,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.01,
        schedule="cosine",
        schedule_by="time",
        warmup_steps=100,
        min_lr_ratio=0.05,
        batch_size=32,
        seq_len=64,
        grad_clip=5.0,
        eval_every=300,
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
        "vocab_size",
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
    if config.tokenizer == "char" and config.vocab_size is not None:
        raise ConfigError("--vocab-size sizes word and bpe tokens; for characters see --max-vocab")
    if config.tokenizer != "char" and config.max_vocab is not None:
        raise ConfigError(
            f"--max-vocab keeps characters; {config.tokenizer} tokens take --vocab-size"
        )
    if not 0 <= config.dropout < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {config.dropout}")
    if not 0 <= config.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    if config.steps is not None and config.epochs is not None:
        raise ConfigError("give --steps or --epochs, not both")
    for option in dataclasses.fields(TrainConfig):
        allowed, value = option.metadata["choices"], getattr(config, option.name)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"unknown {option.name} {value!r}: choose from {allowed}")
    if config.schedule_by == "time" and (config.time_limit is None or config.schedule != "cosine"):
        raise ConfigError("--schedule-by time shapes a cosine toward --time-limit: give both")
    if config.forget_bias is not None and config.cell != "lstm":
        raise ConfigError(f"--forget-bias sets an LSTM's forget gates; a {config.cell} has none")
