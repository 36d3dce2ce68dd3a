"""The training loop: truncated BPTT over minibatches, evaluation, checkpoints, exact resume.

Everything a resumed run needs is in the checkpoint: weights, optimizer moments, the step (which
fixes the data cursor and the schedule), the dropout generator's state, and the LSTM state carried
from the last chunk. So a run stopped at any step and resumed ends with the same weights, bit for
bit, as a run that was never stopped.
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

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from . import backend as backends
from . import checkpoint, distributed, memory
from .batches import ChunkedText, fit_batch
from .config import TrainConfig, validate
from .data import Vocab, file_sha256
from .errors import ConfigError, TrainingError
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
from .runs import (
    PLANNED_STOPS,
    RunLock,
    StopSignals,
    default_out,
    prepare_text,
    resume_point,
    stop_reason,
    write_run_file,
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
    rank: int = 0  # this process's MPI rank (0 without MPI): only rank 0 reports


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

    ``resume``: a run folder to continue (in place unless ``out`` is given) with its saved config;
    ``overrides`` may repeat its settings and change those in config.RESUME_OVERRIDABLE (e.g. a
    larger ``steps``); see runs.resume_point.
    ``stop_after``: stop, with a checkpoint, after this many steps of this call.
    ``log`` receives one-line notes (a text too short for the batch, and so on).
    """
    vocab, point = None, None
    if resume is not None:
        point = resume_point(resume, overrides or {})
        config = point.config
        if point.note:
            log(point.note)
        if point.saved is not None:
            vocab = Vocab.from_json(point.saved[1]["vocab"])
    validate(config)
    comm = distributed.world()
    lead = comm.rank == 0  # prints, evaluates, decides when to stop, writes checkpoints
    vocab, train_ids, val_ids, notes = prepare_text(config, vocab)
    data_sha256 = point.data_sha256 if point else (config.data and file_sha256(config.data))
    batch_size, seq_len, note = fit_batch(len(train_ids), config.batch_size, config.seq_len)
    notes += [note] if note else []
    chunks = ChunkedText(train_ids, batch_size, seq_len)
    if comm.size > batch_size:
        raise ConfigError(
            f"{comm.size} processes need a batch of at least {comm.size} rows; the batch has "
            f"{batch_size}: raise --batch-size or start fewer processes"
        )
    first_row, end_row = comm.rows_of(batch_size)  # this rank's rows of every batch
    rows = (first_row, end_row, batch_size)
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
    _check_memory(config, len(vocab), end_row - first_row, seq_len, comm.local_size)
    model = CharLM(config.model_config(len(vocab)), seed=config.seed, backend=config.backend)
    compiled = backends.resolve(config.backend) == "numba"
    optimizer = make_optimizer(optim_config, model.num_parameters, model.dtype, compiled)
    rng = np.random.default_rng(config.seed + 1)  # dropout masks
    state = model.zero_state(end_row - first_row)  # (L, b, H): this rank's rows
    # the schedule's length stays that of the run as first planned: a resume that extends
    # --steps continues at the schedule's final rate instead of stretching it out again
    progress = {"best_val": None, "bad_evals": 0, "elapsed": 0.0, "schedule_steps": total_steps}
    progress.update(skipped=0, skipped_in_a_row=0)  # batches skipped for a NaN or infinity
    step, metrics = 0, {}

    if point is not None and point.saved is not None:
        state, step, metrics = _restore(point.saved, model, optimizer, rng, progress, rows)
    progress["data_sha256"] = data_sha256  # a resume checks that its text is the same
    out = _run_folder(out, point.folder if point else None, config, comm)
    schedule = _schedule(config, progress["schedule_steps"])
    for line in notes if lead else ():
        log(line)
    out.mkdir(parents=True, exist_ok=True)
    result = TrainResult(model, vocab, out, step, metrics, notes=notes, config=config)
    result.rank = comm.rank
    checkpoint_every = config.checkpoint_every or config.eval_every
    this_call, first_step, chars_seen = time.perf_counter(), step, 0
    started = this_call - progress["elapsed"]  # elapsed time counts earlier calls of a resumed run
    saved_step = step

    def save(best: bool = False):  # at most once per step; a collective under MPI
        nonlocal saved_step
        if saved_step == step and not best:
            return
        whole = tuple(comm.gather_rows(part, batch_size) for part in state)  # (L, B, H) on rank 0
        if lead and saved_step != step:
            progress["elapsed"] = time.perf_counter() - started
            _save(out, model, vocab, config, optimizer, step, rng, whole, progress, result.metrics)
        if lead and best:
            model_meta = _model_meta(model, vocab, config, step, result.metrics)
            checkpoint.save_checkpoint(out / "best", model.params.state_dict(), model_meta)
        saved_step = step

    bar = tqdm(
        total=total_steps, initial=step, disable=quiet or not lead, unit="step", dynamic_ncols=True
    )
    threads = distributed.blas_threads(comm, backends.blas_threads(batch_size, config.hidden_size))
    backends.keep_freed_memory()  # each step's activations reuse the last one's pages
    with (
        RunLock(out) if lead else contextlib.nullcontext(),
        threadpool_limits(threads, user_api="blas"),
        StopSignals() as stop,
        bar,
        open(out / "metrics.jsonl", "a", encoding="utf-8")
        if lead
        else io.StringIO() as metrics_file,
    ):
        if lead and (point is None or point.saved is None):  # a new run: its settings first
            write_run_file(out, config, data_sha256)
        while step < total_steps:
            chunk = step % chunks.num_chunks
            if chunk == 0:  # a new epoch starts from a zero state
                state = model.zero_state(end_row - first_row)
            inputs, targets = chunks.chunk(chunk, slice(first_row, end_row))  # this rank's rows
            loss, grads, state = model.loss_and_grads(
                inputs,
                targets,
                state,
                config.loss_reduction,
                rng if config.dropout else None,
                rows,
            )
            share = (end_row - first_row) / batch_size if config.loss_reduction == "mean" else 1.0
            loss = distributed.sum_gradients(comm, grads.flat, loss, share)
            norm = clip_grad_norm_(grads.flat, config.grad_clip or np.inf)
            lr = lr_at(step, config.lr, schedule)
            problem = _nonfinite(loss, norm)
            if problem is None:
                progress["skipped_in_a_row"] = 0
                if config.clip_value is not None:
                    clip_grad_value_(grads.flat, config.clip_value)
                optimizer.step(model.params.flat, grads.flat, lr)
            else:  # stop (the default), or skip the batch: no update, a fresh state after it
                _skip_or_stop(config, problem, step, out, progress, log)
                state = model.zero_state(end_row - first_row)
            step += 1
            chunk_chars = inputs.shape[0] * batch_size  # (T, b) here; T × B over all ranks
            chars_seen += chunk_chars
            loss_per_char = loss / chunk_chars if config.loss_reduction == "sum" else loss
            elapsed = time.perf_counter() - started
            speed = chars_seen / (time.perf_counter() - this_call)
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_per_char:.4f}",
                val=f"{result.metrics.get('val_loss', float('nan')):.4f}",
                chars_s=f"{speed:,.0f}",
                refresh=False,
            )
            reason = stop_reason(
                config, stop, time.perf_counter() - this_call, step - first_step, stop_after
            )
            # evaluate on schedule, at the end, and before a planned stop (not on a signal)
            best = False
            evaluate_now = step % config.eval_every == 0 or step == total_steps
            if lead and (evaluate_now or reason in PLANNED_STOPS):
                scores = evaluate(model, val_ids, batch_size, max(seq_len, 64))
                result.metrics = {
                    "step": step,
                    "epoch": step / chunks.num_chunks,
                    "lr": lr,
                    "train_loss": loss_per_char if np.isfinite(loss_per_char) else None,
                    "elapsed": elapsed,
                    "chars_per_s": speed,
                    **{f"val_{k}": v for k, v in scores.items()},
                }
                if comm.size > 1:  # the share of this call's time spent summing gradients
                    result.metrics["ranks"] = comm.size
                    result.metrics["allreduce_fraction"] = comm.allreduce_seconds / (
                        time.perf_counter() - this_call
                    )
                metrics_file.write(json.dumps(result.metrics) + "\n")
                metrics_file.flush()
                if not evaluate_now:
                    pass  # an extra evaluation before a planned stop: reported, not judged, so
                    # that a stopped and resumed run keeps the patience of an unstopped one
                elif progress["best_val"] is None or scores["loss"] < progress["best_val"]:
                    progress["best_val"], progress["bad_evals"], best = scores["loss"], 0, True
                else:
                    progress["bad_evals"] += 1
                    if config.patience is not None and progress["bad_evals"] >= config.patience:
                        reason = reason or "early-stopping"
            reason, best = comm.bcast((reason, best))  # rank 0 decides for all
            if best or step % checkpoint_every == 0 or step == total_steps or reason:
                save(best)
            if reason:
                result.stopped_by = reason
                break
    result.step = step
    return result


def _restore(saved, model, optimizer, rng, progress: dict, rows) -> tuple:
    """A save's weights, optimizer moments, dropout generator and progress into this run
    (``progress`` updated in place); returns (this rank's carried state, step, metrics)."""
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
    state = tuple(train_tensors[f"state.{k}"][:, first_row:end_row].copy() for k in "hc")
    progress.update({k: train_meta.get(k, v) for k, v in progress.items()})
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


def _schedule(config: TrainConfig, total_steps: int) -> ScheduleConfig:
    schedule = ScheduleConfig(
        kind=config.schedule,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=config.min_lr_ratio,
        step_size=config.step_size,
        gamma=config.gamma,
    )
    validate_schedule(schedule)
    return schedule


def _check_memory(config: TrainConfig, vocab_size: int, rows: int, seq_len: int, ranks: int):
    """Refuse in one line, before allocating, a run this machine cannot hold (``ranks``: the
    processes of the run on this host, each holding the model and its rows of the batch)."""
    moments = {"sgd": 1 if config.momentum else 0}.get(config.optimizer, 2)
    model_config = config.model_config(vocab_size)
    needed = ranks * memory.training_bytes(model_config, rows, seq_len, moments)
    what = "this run" + (f" ({ranks} processes on this host)" if ranks > 1 else "")
    advice = "lower --hidden-size, --num-layers, --embed-size, --batch-size or --seq-len"
    memory.check_fits(needed, what, advice)


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
