"""The run around the training loop: its text, its folder, its stop signals, where it resumes."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstm_scratch.errors import ConfigError, DataError
from lstm_scratch.model.data import HAMLET, Vocab, file_sha256, load_text, validation_size
from lstm_scratch.model.tokens import UNKNOWN, TokenVocab
from lstm_scratch.training import checkpoint
from lstm_scratch.training.config import LENGTH_TWINS, RESUME_OVERRIDABLE, TrainConfig
from lstm_scratch.training.corpus import corpus_ids


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


@dataclass
class TrainText:
    """A run's text as ids: its vocabulary, the training and validation ids, the characters each
    validation id stands for (None: one each, characters), the training text's characters per
    token (1.0 for characters) and one-line notes."""

    vocab: Vocab | TokenVocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    val_chars: np.ndarray | None
    chars_per_token: float
    notes: list[str]


def prepare_text(config: TrainConfig, vocab: Vocab | TokenVocab | None = None) -> TrainText:
    """The run's text as ids, the last ``val_fraction`` of its characters held out.

    Characters: a ``--data`` file is read as a memory-mapped array of ids
    (``corpus.corpus_ids``), and the two parts are views of it. Word or bpe tokens: the text is
    split by characters first, the tokenizer (unless ``vocab`` is a resumed run's) is trained on
    the training part only, and each part is tokenized on its own.
    """
    if config.tokenizer != "char":
        return _token_text(config, vocab)
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
    train_ids, val_ids, note = _held_out(ids, config.val_fraction)
    return TrainText(vocab, train_ids, val_ids, None, 1.0, [*notes, *note])


def _held_out(items, val_fraction: float) -> tuple:
    """(training part, validation part, [a note]) of ids or of a text: the last
    ``val_fraction`` held out, or the whole used for both, with a note, when that cannot be."""
    if val_fraction == 0:
        note = "no held-out text (--val-fraction 0): val_* metrics are on the training text"
        return items, items, [note]
    try:
        n_train = len(items) - validation_size(len(items), val_fraction)
    except DataError:
        note = (
            f"the text ({len(items)} characters) is too short to hold out "
            f"{val_fraction:.0%}: validating on the training text"
        )
        return items, items, [note]
    return items[:n_train], items[n_train:], []


def _token_parts(config: TrainConfig) -> tuple[str, str, list[str]]:
    """The run's text as (training part, held-out part, notes), split by characters."""
    text = HAMLET if config.data is None else load_text(config.data, config.encoding, config.lower)
    return _held_out(text, config.val_fraction)


def learn_tokenizer(config: TrainConfig) -> TokenVocab:
    """The word or bpe tokenizer of ``config``, learnt from its text's training part."""
    return TokenVocab.train(config.tokenizer, _token_parts(config)[0], config.vocab_size)


def _token_text(config: TrainConfig, vocab: TokenVocab | None) -> TrainText:
    train_text, val_text, notes = _token_parts(config)
    if vocab is None:
        vocab = TokenVocab.train(config.tokenizer, train_text, config.vocab_size)
    train_ids = vocab.encode_counted(train_text)[0]
    val_ids, val_chars, unknown = vocab.encode_known(val_text)  # as `eval` scores a text
    if min(len(train_ids), len(val_ids)) < 2:
        raise DataError(
            f"the training or the held-out part makes fewer than 2 {config.tokenizer} tokens"
        )
    chars_per_token = len(train_text) / len(train_ids)
    notes.append(
        f"{len(vocab):,} {config.tokenizer} tokens, learnt from the training text: "
        f"{chars_per_token:.2f} characters per token"
    )
    if unknown and config.tokenizer == "bpe":
        notes.append(
            f"{sum(unknown.values()):,} characters of the held-out text are not in the training "
            "text: left out of the scores, as eval leaves them out"
        )
    elif unknown:
        share = float(np.mean(val_ids == vocab.unknown_id))
        notes.append(
            f"{share:.1%} of the held-out tokens are {UNKNOWN} (words outside the vocabulary): "
            "each scores as one token, not as the word it hides, so per-character figures are "
            "lower than spelling those words would cost"
        )
    return TrainText(vocab, train_ids, val_ids, val_chars, chars_per_token, notes)


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


RUN_FILE = "run.json"  # the settings a run was started with, written before its first step


def write_run_file(out: Path, config: TrainConfig, data_sha256: str | None) -> None:
    """``RUN/run.json``: the run's settings and its text's sha256, so that a run killed before
    its first checkpoint can be started again, as it was, with ``--resume RUN``."""
    record = {"train_config": dataclasses.asdict(config), "data_sha256": data_sha256}
    checkpoint.atomic_write_bytes(out / RUN_FILE, json.dumps(record, indent=1).encode())


@dataclass
class ResumePoint:
    """Where ``--resume`` continues: the run's config (with the flags given applied), its text's
    sha256, the run folder, and the newest whole save (None: no checkpoint yet, start afresh)."""

    config: TrainConfig
    data_sha256: str | None
    folder: Path
    saved: tuple[dict, dict, dict, dict] | None  # weights, meta, train tensors, train meta
    note: str | None


def resume_point(resume: str | Path, given: dict) -> ResumePoint:
    """The run ``resume`` names (a run folder or its model file), and the config to go on with.

    A folder with no checkpoint yet but a ``run.json`` (killed before its first save) starts
    afresh from the settings recorded there, with a note; with neither there is nothing to
    resume: a one-line error saying to start the run without ``--resume``.
    """
    path = Path(resume)
    if not path.exists():
        raise ConfigError(f"no such run: {path} (nothing to resume; start it without --resume)")
    folder = path.parent if path.is_file() else path
    if path.is_dir() and not (path / checkpoint.MODEL_FILE).exists():
        record = _read_run_file(path)
        if record is None:
            raise ConfigError(
                f"nothing to resume in {path}: it holds no checkpoint ({checkpoint.MODEL_FILE}) "
                f"and no {RUN_FILE}; start the run without --resume"
            )
        config, digest = resume_config(record.get("train_config"), given, record.get("data_sha256"))
        note = f"{path} stopped before its first checkpoint: starting it afresh, as it was started"
        return ResumePoint(config, digest, folder, None, note)
    weights, meta, tensors, train_meta, note = checkpoint.load_resumable(path)
    known = train_meta.get("data_sha256")
    config, digest = resume_config(meta.get("train_config"), given, known)
    return ResumePoint(config, digest, folder, (weights, meta, tensors, train_meta), note)


def _read_run_file(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {folder / RUN_FILE}: {error}") from None
    return record if isinstance(record, dict) else {}


def resume_config(
    saved: dict | None, given: dict, data_sha256: str | None = None
) -> tuple[TrainConfig, str | None]:
    """The saved run's config with the flags ``given`` applied; returns it and its text's sha256.

    A flag given with the value the run already has is accepted; the run-control fields
    (config.RESUME_OVERRIDABLE, e.g. a larger ``steps``) may change; any other difference is
    refused in one line naming the flag, the value given and the run's. ``data`` may name
    another path holding the same text (by sha256), which the run then reads.
    """
    try:
        config = TrainConfig(**saved)
    except TypeError as error:
        raise ConfigError(f"the run holds no usable training config ({error})") from None
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
    fixed = {k: v for k, v in given.items() if k not in RESUME_OVERRIDABLE and k != "data"}
    problems = [
        _difference(name, value, getattr(config, name))
        for name, value in fixed.items()
        if value != getattr(config, name)
    ]
    data_sha256, problem = _resumed_text(config, given.get("data"), data_sha256)
    problems += [problem] if problem else []
    if problems:
        flags = ["--" + name.replace("_", "-") for name in RESUME_OVERRIDABLE]
        raise ConfigError(
            f"{'; '.join(problems)} (on resume only {', '.join(flags[:-1])} and {flags[-1]} "
            "can change: start a new run to change the others)"
        )
    overrides = {k: v for k, v in given.items() if k in RESUME_OVERRIDABLE}
    for name in overrides:
        if name in LENGTH_TWINS and LENGTH_TWINS[name] not in overrides:
            setattr(config, LENGTH_TWINS[name], None)  # --steps replaces the run's epochs
    return dataclasses.replace(config, **overrides), data_sha256


def _difference(name: str, given, saved) -> str:
    """``--batch-size 64: this run was trained with 32``."""
    flag = "--" + name.replace("_", "-")
    if isinstance(given, bool):
        return f"{flag}: this run was trained {'without' if given else 'with'} it"
    if saved is None:
        return f"{flag} {given}: this run was trained without {flag}"
    return f"{flag} {given}: this run was trained with {saved}"


def _resumed_text(config: TrainConfig, given: str | None, known: str | None):
    """(the text's sha256, a problem or None) on resume, setting ``config.data`` to ``given``
    when that file holds the run's text. Without ``given`` the run's own file must still hold
    it. ``known``: the sha256 the run recorded (None in older runs: then the files compare)."""
    if config.data is None:
        return None, None if given is None else (
            f"--data {given}: this run was trained on the built-in Hamlet passage"
        )
    path = config.data if given is None else given
    digest = file_sha256(path)
    if known is None and given is not None and Path(config.data).is_file():
        known = file_sha256(config.data)
    if known is not None and digest != known:
        if given is None:
            raise DataError(
                f"{path} has changed since this run was trained on it: give the run's text "
                "with --data FILE"
            )
        if Path(given).resolve() == Path(config.data).resolve():
            return known, f"--data {given}: the file changed since this run was trained on it"
        return known, f"--data {given}: not the text this run was trained on ({config.data})"
    config.data = str(path)
    return digest, None
