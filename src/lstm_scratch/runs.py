"""The run around the training loop: its text, its folder, its stop signals, its resumed config."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import socket
from pathlib import Path

from .config import RESUME_OVERRIDABLE, TrainConfig
from .corpus import corpus_ids
from .data import HAMLET, Vocab, split_train_val
from .errors import ConfigError, DataError


class StopSignals:
    """Turns SIGINT / SIGTERM into a flag read between steps, so a checkpoint is never half-made."""

    def __init__(self):
        self.signal_name: str | None = None

    def __enter__(self):
        self.saved = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.saved[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal_name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, even in an evaluation or a save
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``RUN/.lock``, which the kernel drops
    when the process ends however it ends, so a killed run never leaves the folder stuck. The
    file names the holder (host and pid) for the message a second writer gets. The new holder
    removes the temporary files of writes that a killed writer left unfinished."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"

    def __enter__(self):
        self.file = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ConfigError(
                f"{self.path.parent} is being trained by {holder}: wait for it, stop it, "
                "or choose another --out"
            ) from None
        self.file.truncate(0)
        self.file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()
        for partial in self.path.parent.glob(".*.tmp"):  # writes a killed writer left unfinished
            partial.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the lock


LARGE_VOCAB = 1000  # distinct characters; above this, training says so


def prepare_text(config: TrainConfig, vocab: Vocab | None = None):
    """The text's ids and vocabulary; returns (vocab, train_ids, val_ids, notes).

    A ``--data`` file is read as a memory-mapped array of ids (``corpus.corpus_ids``); the
    train and validation parts are views of it, the last ``val_fraction`` being validation.
    """
    notes = []
    if config.data is None:
        vocab = vocab or Vocab.from_text(HAMLET)
        ids = vocab.encode(HAMLET)
    else:
        vocab, ids = corpus_ids(config.data, config.encoding, config.lower, vocab, config.max_vocab)
        if len(vocab) > LARGE_VOCAB:
            notes.append(
                f"{len(vocab):,} distinct characters: the output layer has that many classes "
                "(--max-vocab K keeps the K-1 most frequent and one bucket for the rest)"
            )
    if config.val_fraction == 0:
        note = "no held-out text (--val-fraction 0): val_* metrics are on the training text"
        return vocab, ids, ids, [*notes, note]
    try:
        train_ids, val_ids = split_train_val(ids, config.val_fraction, copy=False)
    except DataError:
        note = (
            f"the text ({len(ids)} characters) is too short to hold out "
            f"{config.val_fraction:.0%}: validating on the training text"
        )
        return vocab, ids, ids, [*notes, note]
    return vocab, train_ids, val_ids, notes


def default_out(config: TrainConfig) -> Path:
    """runs/<preset or data file name>, with -2, -3, … added so no earlier run is overwritten."""
    name = config.preset or (Path(config.data).stem if config.data else "hamlet")
    out = Path("runs") / name
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"{name}-{n}"
    return out


PLANNED_STOPS = ("time-limit", "stop-after")


def stop_reason(config, stop, seconds, steps_run, stop_after) -> str | None:
    """Why to stop after this step, if at all (early stopping is judged at evaluations).
    The time limit and ``stop_after`` count this call only, so a resumed run gets its own."""
    if stop.signal_name:
        return stop.signal_name
    if config.time_limit is not None and seconds >= config.time_limit * 60:
        return "time-limit"
    if stop_after is not None and steps_run >= stop_after:
        return "stop-after"
    return None


def resume_config(meta: dict, overrides: dict) -> TrainConfig:
    """The saved run's config with ``overrides`` applied; only run-control fields may change."""
    fixed = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
    if fixed:
        raise ConfigError(
            f"--{fixed[0].replace('_', '-')} cannot change when resuming a run "
            f"(only {', '.join(RESUME_OVERRIDABLE)} can)"
        )
    try:
        saved = TrainConfig(**meta["train_config"])
    except (KeyError, TypeError) as error:
        raise ConfigError(f"the checkpoint holds no usable training config ({error})") from None
    if "steps" in overrides:
        saved.epochs = None
    if "epochs" in overrides:
        saved.steps = None
    return dataclasses.replace(saved, **overrides)
