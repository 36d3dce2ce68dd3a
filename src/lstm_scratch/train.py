"""The training loop: truncated BPTT over minibatches, evaluation, checkpoints, exact resume.

Everything a resumed run needs is in the checkpoint: weights, optimizer moments, the step (which
fixes the data cursor and the schedule), the dropout generator's state, and the LSTM state carried
from the last chunk. So a run stopped at any step and resumed ends with the same weights, bit for
bit, as a run that was never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from . import backend as backends
from . import checkpoint
from .batches import ChunkedText, fit_batch
from .config import RESUME_OVERRIDABLE, TrainConfig, validate
from .data import HAMLET, Vocab, load_text, split_train_val
from .errors import ConfigError, DataError, TrainingError
from .evaluate import evaluate
from .model import CharLM
from .optim import (
    OptimizerConfig,
    ScheduleConfig,
    clip_grad_norm_,
    clip_grad_value_,
    lr_at,
    make_optimizer,
    validate_schedule,
)


@dataclass
class TrainResult:
    model: CharLM
    vocab: Vocab
    out: Path
    step: int
    metrics: dict = field(default_factory=dict)  # the last evaluation
    stopped_by: str = "done"  # "done", "early-stopping", "time-limit", "stop-after", "SIGINT", …
    notes: list[str] = field(default_factory=list)
    config: TrainConfig | None = None


class _Stop:
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


def prepare_text(config: TrainConfig, vocab: Vocab | None = None):
    """Load and encode the text; returns (vocab, train_ids, val_ids, notes)."""
    text = HAMLET if config.data is None else load_text(config.data, config.encoding, config.lower)
    vocab = vocab or Vocab.from_text(text)
    ids = vocab.encode(text)
    if config.val_fraction == 0:
        return (
            vocab,
            ids,
            ids,
            ["no held-out text (--val-fraction 0): val_* metrics are on the training text"],
        )
    try:
        train_ids, val_ids = split_train_val(ids, config.val_fraction)
    except DataError:
        note = (
            f"the text ({len(ids)} characters) is too short to hold out "
            f"{config.val_fraction:.0%}: validating on the training text"
        )
        return vocab, ids, ids, [note]
    return vocab, train_ids, val_ids, []


def default_out(config: TrainConfig) -> Path:
    """runs/<preset or data file name>, with -2, -3, … added so no earlier run is overwritten."""
    name = config.preset or (Path(config.data).stem if config.data else "hamlet")
    out = Path("runs") / name
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"{name}-{n}"
    return out


def _model_meta(model, vocab, config, step, metrics) -> dict:
    """What a model file says about itself: enough to rebuild, sample, evaluate or resume."""
    return {
        "model": dataclasses.asdict(model.config),
        "vocab": vocab.to_json(),
        "step": step,
        "metrics": metrics,
        "train_config": dataclasses.asdict(config),
    }


def _save(out, model, vocab, config, optimizer, step, rng, state, progress: dict, metrics):
    meta = _model_meta(model, vocab, config, step, metrics)
    tensors = {f"optimizer.{k}": v for k, v in optimizer.state_tensors().items()}
    tensors.update({"state.h": state[0], "state.c": state[1]})
    train_meta = {
        "step": step,
        "rng": rng.bit_generator.state,
        **progress,
        "optimizer": optimizer.state_meta(),
    }
    checkpoint.save_checkpoint(out, model.params.state_dict(), meta, tensors, train_meta)


def train(
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: dict | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
    log=print,
) -> TrainResult:
    """Train a CharLM as ``config`` says, writing checkpoints and metrics.jsonl into ``out``.

    ``resume``: a run folder to continue (in place unless ``out`` is given) with its saved config,
    changed only by ``overrides`` (fields in config.RESUME_OVERRIDABLE, e.g. a larger ``steps``).
    ``stop_after``: stop, with a checkpoint, after this many steps of this call.
    ``log`` receives one-line notes (a text too short for the batch, and so on).
    """
    vocab = None
    if resume is not None:
        weights, meta = checkpoint.load_checkpoint(resume)
        train_tensors, train_meta = checkpoint.load_train_state(resume)
        config = resume_config(meta, overrides or {})
        vocab = Vocab.from_json(meta["vocab"])
    validate(config)
    vocab, train_ids, val_ids, notes = prepare_text(config, vocab)
    batch_size, seq_len, note = fit_batch(len(train_ids), config.batch_size, config.seq_len)
    notes += [note] if note else []
    chunks = ChunkedText(train_ids, batch_size, seq_len)
    if config.epochs is not None:
        total_steps = math.ceil(config.epochs * chunks.num_chunks)
    else:
        total_steps = config.steps or 1000

    optim_config = OptimizerConfig(
        name=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
    )
    model = CharLM(config.model_config(len(vocab)), seed=config.seed, backend=config.backend)
    optimizer = make_optimizer(optim_config, model.num_parameters, model.dtype)
    rng = np.random.default_rng(config.seed + 1)  # dropout masks
    state = model.zero_state(batch_size)
    # the schedule's length stays that of the run as first planned: a resume that extends
    # --steps continues at the schedule's final rate instead of stretching it out again
    progress = {"best_val": None, "bad_evals": 0, "elapsed": 0.0, "schedule_steps": total_steps}
    step, metrics = 0, {}

    if resume is not None:
        model.params.load_state_dict(weights)
        optimizer.load_state(
            {
                k.removeprefix("optimizer."): v
                for k, v in train_tensors.items()
                if k.startswith("optimizer.")
            },
            train_meta["optimizer"],
        )
        rng.bit_generator.state = train_meta["rng"]
        state = (train_tensors["state.h"], train_tensors["state.c"])
        step, metrics = train_meta["step"], meta.get("metrics") or {}
        progress = {k: train_meta.get(k, v) for k, v in progress.items()}
        run_dir = Path(resume).parent if Path(resume).is_file() else Path(resume)
        out = Path(out) if out is not None else run_dir
    else:
        run_dir = None
        out = Path(out) if out is not None else default_out(config)
    if (out / "model.safetensors").exists() and (
        run_dir is None or out.resolve() != run_dir.resolve()
    ):
        raise ConfigError(
            f"{out} already holds a checkpoint: continue it with --resume {out}, "
            "or choose another --out"
        )
    schedule = ScheduleConfig(
        kind=config.schedule,
        warmup_steps=config.warmup_steps,
        total_steps=progress["schedule_steps"],
        min_lr_ratio=config.min_lr_ratio,
        step_size=config.step_size,
        gamma=config.gamma,
    )
    validate_schedule(schedule)
    for line in notes:
        log(line)
    out.mkdir(parents=True, exist_ok=True)
    result = TrainResult(model, vocab, out, step, metrics, notes=notes, config=config)
    checkpoint_every = config.checkpoint_every or config.eval_every
    this_call, first_step, chars_seen = time.perf_counter(), step, 0
    started = this_call - progress["elapsed"]  # elapsed time counts earlier calls of a resumed run
    saved_step = step

    def save():  # at most once per step
        nonlocal saved_step
        if saved_step != step:
            progress["elapsed"] = time.perf_counter() - started
            _save(out, model, vocab, config, optimizer, step, rng, state, progress, result.metrics)
            saved_step = step

    bar = tqdm(total=total_steps, initial=step, disable=quiet, unit="step", dynamic_ncols=True)
    threads = backends.blas_threads(batch_size, config.hidden_size)
    with (
        threadpool_limits(threads, user_api="blas"),
        _Stop() as stop,
        bar,
        open(out / "metrics.jsonl", "a", encoding="utf-8") as metrics_file,
    ):
        while step < total_steps:
            chunk = step % chunks.num_chunks
            if chunk == 0:  # a new epoch starts from a zero state
                state = model.zero_state(batch_size)
            inputs, targets = chunks.chunk(chunk)
            loss, grads, state = model.loss_and_grads(
                inputs, targets, state, config.loss_reduction, rng if config.dropout else None
            )
            if not np.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss} at step {step + 1}: lower --lr or clip "
                    f"harder; the last good checkpoint in {out} is kept"
                )
            norm = clip_grad_norm_(grads.flat, config.grad_clip or np.inf)
            if not np.isfinite(norm):
                raise TrainingError(
                    f"the gradient norm became {norm} at step {step + 1}: lower "
                    f"--lr or clip harder; the last good checkpoint in {out} is kept"
                )
            if config.clip_value is not None:
                clip_grad_value_(grads.flat, config.clip_value)
            lr = lr_at(step, config.lr, schedule)
            optimizer.step(model.params.flat, grads.flat, lr)
            step += 1
            chars_seen += inputs.size
            loss_per_char = loss / inputs.size if config.loss_reduction == "sum" else loss
            elapsed = time.perf_counter() - started
            speed = chars_seen / (time.perf_counter() - this_call)
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_per_char:.4f}",
                val=f"{result.metrics.get('val_loss', float('nan')):.4f}",
                chars_s=f"{speed:,.0f}",
                refresh=False,
            )
            reason = _stop_reason(
                config, stop, time.perf_counter() - this_call, step - first_step, stop_after
            )
            # evaluate on schedule, at the end, and before a planned stop (not on a signal)
            if step % config.eval_every == 0 or step == total_steps or reason in PLANNED_STOPS:
                scores = evaluate(model, val_ids, batch_size, max(seq_len, 64))
                result.metrics = {
                    "step": step,
                    "epoch": step / chunks.num_chunks,
                    "lr": lr,
                    "train_loss": loss_per_char,
                    "elapsed": elapsed,
                    "chars_per_s": speed,
                    **{f"val_{k}": v for k, v in scores.items()},
                }
                metrics_file.write(json.dumps(result.metrics) + "\n")
                metrics_file.flush()
                best = progress["best_val"]
                if best is None or scores["loss"] < best:
                    progress["best_val"], progress["bad_evals"] = scores["loss"], 0
                    save()
                    model_meta = _model_meta(model, vocab, config, step, result.metrics)
                    checkpoint.save_checkpoint(out / "best", model.params.state_dict(), model_meta)
                else:
                    progress["bad_evals"] += 1
                    if config.patience is not None and progress["bad_evals"] >= config.patience:
                        reason = reason or "early-stopping"
            if step % checkpoint_every == 0 or step == total_steps:
                save()
            if reason:
                result.stopped_by = reason
                save()
                break
    result.step = step
    return result


PLANNED_STOPS = ("time-limit", "stop-after")


def _stop_reason(config, stop, seconds, steps_run, stop_after) -> str | None:
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
