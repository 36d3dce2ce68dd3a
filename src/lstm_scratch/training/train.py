"""The training loop: truncated BPTT over minibatches, evaluation, checkpoints, exact resume.

Everything a resumed run needs is in the checkpoint: weights, optimizer moments, the step (which
fixes the data cursor and the schedule), the dropout generator's state, and the recurrent state
carried from the last chunk. So a run stopped at any step and resumed ends with the same
weights, bit for bit, as a run that was never stopped.

train() reads top to bottom, in the phases of its helpers below: set up or resume (``Run``, what
is fixed for the call, and ``Progress``, what changes), one training step, evaluate and track the
best, checkpoint, stop. Under MPI every rank runs the same steps and collectives in the same
order; rank 0 evaluates, decides when to stop and tells the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from lstm_scratch.errors import ConfigError, TrainingError
from lstm_scratch.fast import host
from lstm_scratch.model import backend as backends
from lstm_scratch.model import memory
from lstm_scratch.model.batches import ChunkedText, fit_batch
from lstm_scratch.model.charlm import CharLM
from lstm_scratch.model.data import Vocab, file_sha256
from lstm_scratch.model.tokens import TokenVocab, vocab_from_json
from lstm_scratch.training import checkpoint, distributed
from lstm_scratch.training.config import TrainConfig, validate
from lstm_scratch.training.evaluate import evaluate
from lstm_scratch.training.optim import (
    FlatOptimizer,
    OptimizerConfig,
    ScheduleConfig,
    clip_grad_norm_,
    clip_grad_value_,
    lr_at,
    make_optimizer,
    validate_schedule,
)
from lstm_scratch.training.runs import (
    PLANNED_STOPS,
    RunLock,
    StopSignals,
    default_out,
    learn_tokenizer,
    prepare_text,
    resume_point,
    stop_reason,
    write_run_file,
)


@dataclass
class TrainResult:
    model: CharLM
    vocab: Vocab | TokenVocab
    out: Path
    step: int
    metrics: dict = field(default_factory=dict)  # the last evaluation
    stopped_by: str = "done"  # "done", "early-stopping", "time-limit", "stop-after", "SIGINT", …
    notes: list[str] = field(default_factory=list)
    config: TrainConfig | None = None
    rank: int = 0  # this process's MPI rank (0 without MPI): only rank 0 reports


@dataclass
class Run:
    """What set-up fixes for one call of train(): the settings, the text and its batches, the
    model, its optimizer and schedule, the dropout generator, the run folder, the MPI world."""

    config: TrainConfig
    comm: object  # distributed.world(): this process's rank among the run's processes
    vocab: Vocab | TokenVocab
    chunks: ChunkedText  # the training text as (T, B) chunks
    val_ids: np.ndarray
    val_chars: np.ndarray | None  # the characters each validation id stands for (None: one)
    chars_per_token: float  # of the training text: 1.0 for characters
    rows: tuple[int, int, int]  # this rank's first and end row of every batch, the batch's rows
    seq_len: int  # as fitted to the text
    total_steps: int | None  # None: until the time limit (a schedule by time, no --steps)
    model: CharLM
    optimizer: FlatOptimizer
    rng: np.random.Generator  # dropout masks
    schedule: ScheduleConfig
    out: Path
    notes: list[str]
    data_sha256: str | None
    resumed: bool  # from a checkpoint; False: a new run (or one killed before its first save)

    @property
    def lead(self) -> bool:  # prints, evaluates, decides when to stop, writes checkpoints
        return self.comm.rank == 0

    @property
    def batch_size(self) -> int:
        return self.rows[2]


@dataclass
class Progress:
    """What changes as the run goes: the step, this rank's carried recurrent state, the last
    evaluation, the record a checkpoint keeps of the run's course, and this call's clock."""

    step: int
    state: tuple  # (L, b, H) h and c (LSTM) or h (GRU, RNN) of this rank's rows
    record: dict  # best_val, bad_evals, elapsed, schedule_steps, skipped, …, data_sha256
    metrics: dict  # the last evaluation
    first_step: int = 0  # this call's first step
    this_call: float = 0.0  # perf_counter() when this call's first step began
    started: float = 0.0  # the same, less the time earlier calls of a resumed run took
    chars_seen: int = 0  # tokens (characters for a char model) in this call, over all ranks

    def start_clock(self) -> None:
        self.first_step, self.this_call, self.chars_seen = self.step, time.perf_counter(), 0
        self.started = self.this_call - self.record["elapsed"]


class StepStats(NamedTuple):
    loss: float  # the training loss per character, over all ranks (see Run.chars_per_token)
    lr: float
    elapsed: float  # seconds since the run began, earlier calls included
    speed: float  # characters per second in this call


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

    ``resume``: a run folder to continue (in place unless ``out`` is given) with its saved config;
    ``overrides`` may repeat its settings and change those in config.RESUME_OVERRIDABLE (e.g. a
    larger ``steps``); see runs.resume_point.
    ``stop_after``: stop, with a checkpoint, after this many steps of this call.
    ``log`` receives one-line notes (a text too short for the batch, and so on).
    """
    run, progress = _set_up(config, out, resume, overrides, log)
    for line in run.notes if run.lead else ():
        log(line)
    run.out.mkdir(parents=True, exist_ok=True)
    progress.start_clock()
    with _running(run, progress, quiet) as (stop, bar, metrics_file):
        if run.lead and not run.resumed:  # a new run: its settings first
            write_run_file(run.out, run.config, run.data_sha256)
        more = _more_to_do(run, progress)
        while more:
            stats = _train_step(run, progress, log)
            _show(bar, stats, progress.metrics)
            seconds = time.perf_counter() - progress.this_call
            steps_run = progress.step - progress.first_step
            reason = stop_reason(run.config, stop, seconds, steps_run, stop_after)
            more = _more_to_do(run, progress)  # on every rank: a collective in a run by time
            if reason in (None, "time-limit") and not more:
                reason = "done"  # the last step, or a schedule by time's last second
            best = False
            if run.lead:
                reason, best = _evaluate(run, progress, stats, reason, metrics_file)
            reason, best = run.comm.bcast((reason, best))  # rank 0 decides for all
            if best or reason or _checkpoint_due(run, progress.step):
                _save(run, progress, best)  # a collective under MPI
            if reason:
                return _result(run, progress, reason)
    return _result(run, progress, "done")


def _more_to_do(run: Run, progress: Progress) -> bool:
    """Whether the run has steps left: by count, or, for a schedule by time without one, until
    its planned seconds of elapsed time are spent (earlier calls' included; rank 0's clock)."""
    if run.total_steps is not None:
        return progress.step < run.total_steps
    elapsed = time.perf_counter() - progress.started
    return run.comm.bcast(elapsed < run.schedule.total_seconds)


@contextlib.contextmanager
def _running(run: Run, progress: Progress, quiet: bool):
    """What a call holds while it trains: the run folder's lock and metrics.jsonl (rank 0), the
    BLAS threads, the stop signals and the progress bar; yields (signals, bar, metrics file)."""
    bar = tqdm(
        total=run.total_steps,
        initial=progress.step,
        disable=quiet or not run.lead,
        unit="step",
        dynamic_ncols=True,
    )
    threads = host.blas_threads(run.batch_size, run.config.hidden_size)
    threads = distributed.blas_threads(run.comm, threads)
    host.keep_freed_memory()  # each step's activations reuse the last one's pages
    with (
        RunLock(run.out) if run.lead else contextlib.nullcontext(),
        threadpool_limits(threads, user_api="blas"),
        StopSignals() as stop,
        bar,
        open(run.out / "metrics.jsonl", "a", encoding="utf-8")
        if run.lead
        else io.StringIO() as metrics_file,
    ):
        yield stop, bar, metrics_file


# set up or resume


def _set_up(config, out, resume, overrides, log) -> tuple[Run, Progress]:
    """The settings (a resumed run's, with ``overrides``), the text and its batches, the model,
    its optimizer, the dropout generator, the progress (restored on resume), the run folder and
    the schedule. Refuses in one line whatever cannot work, before anything is written."""
    config, point, vocab = _settings(config, resume, overrides, log)
    comm = distributed.world()
    if vocab is None and config.tokenizer != "char" and comm.size > 1:  # one for every rank
        learnt = learn_tokenizer(config).to_json() if comm.rank == 0 else None
        vocab = vocab_from_json(comm.bcast(learnt))
    text = prepare_text(config, vocab)
    data_sha256 = point.data_sha256 if point else (config.data and file_sha256(config.data))
    chunks, rows, seq_len = _batches(config, text.train_ids, comm, text.notes)
    if config.epochs is not None:
        total_steps = math.ceil(config.epochs * chunks.num_chunks)
    elif config.steps is not None or config.schedule_by == "steps":
        total_steps = config.steps or 1000
    else:  # a schedule by time and no length: the time limit ends the run
        total_steps = None
    model, optimizer = _model_and_optimizer(config, len(text.vocab), rows, seq_len, comm)
    rng = np.random.default_rng(config.seed + 1)  # dropout masks
    saved = point.saved if point else None
    seconds = config.time_limit * 60 if config.schedule_by == "time" else None
    progress = _progress(saved, model, optimizer, rng, rows, total_steps, seconds)
    progress.record["data_sha256"] = data_sha256  # a resume checks that its text is the same
    out = _run_folder(out, point.folder if point else None, config, comm)
    # the schedule's length stays that of the run as first planned: a resume that extends
    # --steps (or gives another --time-limit) continues at the schedule's final rate instead of
    # stretching it out again
    planned = progress.record
    schedule = config.pick(
        ScheduleConfig,
        total_steps=planned["schedule_steps"],
        total_seconds=planned["schedule_seconds"],
    )
    validate_schedule(schedule)
    run = Run(
        config=config,
        comm=comm,
        vocab=text.vocab,
        chunks=chunks,
        val_ids=text.val_ids,
        val_chars=text.val_chars,
        chars_per_token=text.chars_per_token,
        rows=rows,
        seq_len=seq_len,
        total_steps=total_steps,
        model=model,
        optimizer=optimizer,
        rng=rng,
        schedule=schedule,
        out=out,
        notes=text.notes,
        data_sha256=data_sha256,
        resumed=saved is not None,
    )
    return run, progress


def _settings(
    config, resume, overrides, log
) -> tuple[TrainConfig, object, Vocab | TokenVocab | None]:
    """The config to train with (on resume the run's, with ``overrides`` applied), the resume
    point (None for a new run) and the vocabulary of the run's checkpoint, if any."""
    point, vocab = None, None
    if resume is not None:
        point = resume_point(resume, overrides or {})
        config = point.config
        if point.note:
            log(point.note)
        if point.saved is not None:
            vocab = vocab_from_json(point.saved[1]["vocab"])
    validate(config)
    return config, point, vocab


def _batches(config: TrainConfig, train_ids, comm, notes: list[str]) -> tuple:
    """The training text cut into batches (fitted to a short text, with a note in ``notes``);
    returns (the chunks, this rank's rows as (first, end, batch size), the sequence length)."""
    batch_size, seq_len, note = fit_batch(len(train_ids), config.batch_size, config.seq_len)
    if note:
        notes.append(note)
    chunks = ChunkedText(train_ids, batch_size, seq_len)
    if comm.size > batch_size:
        raise ConfigError(
            f"{comm.size} processes need a batch of at least {comm.size} rows; the batch has "
            f"{batch_size}: raise --batch-size or start fewer processes"
        )
    first_row, end_row = comm.rows_of(batch_size)  # this rank's rows of every batch
    return chunks, (first_row, end_row, batch_size), seq_len


def _model_and_optimizer(config: TrainConfig, vocab_size: int, rows, seq_len: int, comm):
    """The model with its initial weights and its optimizer, once the machine can hold them."""
    first_row, end_row, _ = rows
    _check_memory(config, vocab_size, end_row - first_row, seq_len, comm.local_size)
    model = CharLM(config.model_config(vocab_size), seed=config.seed, backend=config.backend)
    compiled = backends.resolve(config.backend) == "numba"
    optimizer = make_optimizer(
        config.pick(OptimizerConfig), model.num_parameters, model.dtype, compiled
    )
    return model, optimizer


def _progress(saved, model, optimizer, rng, rows, total_steps, seconds) -> Progress:
    """A new run's progress, or the one ``saved`` holds (a resume: the model, the optimizer
    and the dropout generator are restored too). ``total_steps`` and ``seconds`` are the
    schedule's planned length in steps or in seconds of elapsed time (None where unused)."""
    first_row, end_row, _ = rows
    record = {"best_val": None, "bad_evals": 0, "elapsed": 0.0, "schedule_steps": total_steps}
    record["schedule_seconds"] = seconds
    record.update(skipped=0, skipped_in_a_row=0)  # batches skipped for a NaN or infinity
    progress = Progress(0, model.zero_state(end_row - first_row), record, {})
    if saved is not None:
        progress.state, progress.step, progress.metrics = _restore(
            saved, model, optimizer, rng, record, rows
        )
    return progress


def _restore(saved, model, optimizer, rng, record: dict, rows) -> tuple:
    """A save's weights, optimizer moments, dropout generator and record into this run
    (``record`` updated in place); returns (this rank's carried state, step, metrics)."""
    weights, meta, train_tensors, train_meta = saved
    model.params.load_state_dict(weights)
    moments = {
        k.removeprefix("optimizer."): v
        for k, v in train_tensors.items()
        if k.startswith("optimizer.")
    }
    optimizer.load_state(moments, train_meta["optimizer"])
    rng.bit_generator.state = train_meta["rng"]
    first_row, end_row, _ = rows
    names = "hc"[: model.state_size]  # state.h, and state.c for the LSTM
    state = tuple(train_tensors[f"state.{k}"][:, first_row:end_row].copy() for k in names)
    record.update({k: train_meta.get(k, v) for k, v in record.items()})
    return state, train_meta["step"], meta.get("metrics") or {}


def _run_folder(out, run_dir: Path | None, config: TrainConfig, comm) -> Path:
    """Where the run writes: ``out``, else the resumed run's folder, else runs/<name>; never
    over another run's checkpoint."""
    out = Path(out) if out is not None else run_dir or default_out(config)
    out = comm.bcast(out)  # rank 0's choice: another rank could see runs/NAME made already
    if (out / "model.safetensors").exists() and (
        run_dir is None or out.resolve() != run_dir.resolve()
    ):
        raise ConfigError(
            f"{out} already holds a checkpoint: continue it with --resume {out}, "
            "or choose another --out"
        )
    return out


def _check_memory(config: TrainConfig, vocab_size: int, rows: int, seq_len: int, ranks: int):
    """Refuse in one line, before allocating, a run this machine cannot hold (``ranks``: the
    processes of the run on this host, each holding the model and its rows of the batch)."""
    moments = {"sgd": 1 if config.momentum else 0}.get(config.optimizer, 2)
    model_config = config.model_config(vocab_size)
    needed = ranks * memory.training_bytes(model_config, rows, seq_len, moments)
    what = "this run" + (f" ({ranks} processes on this host)" if ranks > 1 else "")
    advice = "lower --hidden-size, --num-layers, --embed-size, --batch-size or --seq-len"
    memory.check_fits(needed, what, advice)


# one training step


def _train_step(run: Run, progress: Progress, log) -> StepStats:
    """Forward and backward over this rank's rows of the next chunk, the gradients summed over
    the ranks and clipped, and the update; or, on a NaN or infinity, the stop or the skip."""
    config, model = run.config, run.model
    first_row, end_row, batch_size = run.rows
    elapsed = 0.0  # when this step begins, in seconds of the run: rank 0's clock for all
    if run.schedule.total_seconds is not None:
        elapsed = run.comm.bcast(time.perf_counter() - progress.started)
    chunk = progress.step % run.chunks.num_chunks
    if chunk == 0:  # a new epoch starts from a zero state
        progress.state = model.zero_state(end_row - first_row)
    inputs, targets = run.chunks.chunk(chunk, slice(first_row, end_row))  # this rank's rows
    dropout = run.rng if config.dropout else None
    loss, grads, progress.state = model.loss_and_grads(
        inputs, targets, progress.state, config.loss_reduction, dropout, run.rows
    )
    share = (end_row - first_row) / batch_size if config.loss_reduction == "mean" else 1.0
    loss = distributed.sum_gradients(run.comm, grads.flat, loss, share)
    norm = clip_grad_norm_(grads.flat, config.grad_clip or np.inf)
    lr = lr_at(progress.step, config.lr, run.schedule, elapsed)
    problem = _nonfinite(loss, norm)
    if problem is None:
        progress.record["skipped_in_a_row"] = 0
        if config.clip_value is not None:
            clip_grad_value_(grads.flat, config.clip_value)
        run.optimizer.step(model.params.flat, grads.flat, lr)
    else:  # stop (the default), or skip the batch: no update, a fresh state after it
        _skip_or_stop(config, problem, progress.step, run.out, progress.record, log)
        progress.state = model.zero_state(end_row - first_row)
    progress.step += 1
    chunk_chars = inputs.shape[0] * batch_size  # (T, b) here; T × B over all ranks
    progress.chars_seen += chunk_chars
    loss_per_token = loss / chunk_chars if config.loss_reduction == "sum" else loss
    elapsed = time.perf_counter() - progress.started
    tokens_per_s = progress.chars_seen / (time.perf_counter() - progress.this_call)
    per_char = run.chars_per_token  # word and bpe: the training text's mean, to compare
    return StepStats(loss_per_token / per_char, lr, elapsed, tokens_per_s * per_char)


def _show(bar, stats: StepStats, metrics: dict) -> None:
    bar.update(1)
    bar.set_postfix(
        loss=f"{stats.loss:.4f}",
        val=f"{metrics.get('val_loss', float('nan')):.4f}",
        chars_s=f"{stats.speed:,.0f}",
        refresh=False,
    )


# evaluate and track the best


def _evaluate(run: Run, progress: Progress, stats: StepStats, reason, metrics_file) -> tuple:
    """On rank 0: evaluate on schedule, at the last step (of a schedule by time, the one that
    spends its seconds), and before a planned stop (not on a signal); write the metrics line;
    judge the evaluation. Returns (reason to stop, best)."""
    at_end = progress.step == run.total_steps or reason == "done"
    on_schedule = progress.step % run.config.eval_every == 0 or at_end
    if not on_schedule and reason not in PLANNED_STOPS:
        return reason, False
    scores = evaluate(run.model, run.val_ids, run.batch_size, max(run.seq_len, 64), run.val_chars)
    progress.metrics = _metrics(run, progress, stats, scores)
    metrics_file.write(json.dumps(progress.metrics) + "\n")
    metrics_file.flush()
    if not on_schedule:  # an extra evaluation before a planned stop is reported, not judged,
        return reason, False  # so a stopped and resumed run keeps an unstopped one's patience
    return _judge(run.config, progress.record, scores["loss"], reason)


def _metrics(run: Run, progress: Progress, stats: StepStats, scores: dict) -> dict:
    """An evaluation's line of metrics.jsonl."""
    metrics = {
        "step": progress.step,
        "epoch": progress.step / run.chunks.num_chunks,
        "lr": stats.lr,
        "train_loss": stats.loss if np.isfinite(stats.loss) else None,
        "elapsed": stats.elapsed,
        "chars_per_s": stats.speed,
        **{f"val_{k}": v for k, v in scores.items()},
    }
    if run.comm.size > 1:  # the share of this call's time spent summing gradients
        metrics["ranks"] = run.comm.size
        seconds = time.perf_counter() - progress.this_call
        metrics["allreduce_fraction"] = run.comm.allreduce_seconds / seconds
    return metrics


def _judge(config: TrainConfig, record: dict, loss: float, reason) -> tuple:
    """The best evaluation so far, or one more without improvement: early stopping after
    ``config.patience`` of them. Returns (reason to stop, best)."""
    if record["best_val"] is None or loss < record["best_val"]:
        record["best_val"], record["bad_evals"] = loss, 0
        return reason, True
    record["bad_evals"] += 1
    if config.patience is not None and record["bad_evals"] >= config.patience:
        reason = reason or "early-stopping"
    return reason, False


# checkpoint


def _checkpoint_due(run: Run, step: int) -> bool:
    every = run.config.checkpoint_every or run.config.eval_every
    return step % every == 0 or step == run.total_steps


def _save(run: Run, progress: Progress, best: bool) -> None:
    """A checkpoint of this step, and of best/ too when ``best``. A collective under MPI: the
    carried state is gathered onto rank 0, which writes."""
    model, step = run.model, progress.step
    state = tuple(run.comm.gather_rows(part, run.batch_size) for part in progress.state)
    if not run.lead:
        return
    progress.record["elapsed"] = time.perf_counter() - progress.started
    tensors = {f"optimizer.{k}": v for k, v in run.optimizer.state_tensors().items()}
    names = "hc"[: len(state)]  # state.h, and state.c for the LSTM
    tensors.update({f"state.{k}": part for k, part in zip(names, state, strict=True)})
    train_meta = {
        "step": step,
        "rng": run.rng.bit_generator.state,
        **progress.record,
        "optimizer": run.optimizer.state_meta(),
    }
    meta = _model_meta(model, run.vocab, run.config, step, progress.metrics)
    checkpoint.save_checkpoint(run.out, model.params.state_dict(), meta, tensors, train_meta)
    if best:
        meta = _model_meta(model, run.vocab, run.config, step, progress.metrics)
        checkpoint.save_checkpoint(run.out / "best", model.params.state_dict(), meta)


def _model_meta(model, vocab, config, step, metrics) -> dict:
    """What a model file says about itself: enough to rebuild, sample, evaluate or resume."""
    return {
        "model": dataclasses.asdict(model.config),
        "vocab": vocab.to_json(),
        "step": step,
        "metrics": metrics,
        "train_config": dataclasses.asdict(config),
    }


# stop


def _result(run: Run, progress: Progress, stopped_by: str) -> TrainResult:
    return TrainResult(
        run.model,
        run.vocab,
        run.out,
        progress.step,
        progress.metrics,
        stopped_by,
        run.notes,
        run.config,
        run.comm.rank,
    )


MAX_SKIPS_IN_A_ROW = 10


def _nonfinite(loss: float, norm: float) -> str | None:
    if not np.isfinite(loss):
        return f"the loss became {loss}"
    if not np.isfinite(norm):
        return f"the gradient norm became {norm}"
    return None


def _skip_or_stop(config, problem: str, step: int, out, progress: dict, log) -> None:
    """A NaN or infinity at ``step``: stop with a message naming the step (``--on-nonfinite
    stop``, the default, as char-rnn does), or count the batch as skipped and go on."""
    if config.on_nonfinite == "stop":
        raise TrainingError(
            f"{problem} at step {step + 1}: lower --lr or clip harder (or --on-nonfinite skip); "
            f"the last good checkpoint in {out} is kept"
        )
    progress["skipped"] += 1
    progress["skipped_in_a_row"] += 1
    if progress["skipped_in_a_row"] > MAX_SKIPS_IN_A_ROW:
        raise TrainingError(
            f"{problem} at step {step + 1}, and at the {MAX_SKIPS_IN_A_ROW} steps before it: "
            f"lower --lr; the last good checkpoint in {out} is kept"
        )
    log(f"step {step + 1}: {problem}; batch skipped ({progress['skipped']} so far)")
