"""The command line, called through its real entry point in temporary folders."""

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import SMALL, assert_one_line_error, metrics, run, weights
from lstm_scratch.app.cli import build_parser
from lstm_scratch.model.data import HAMLET
from lstm_scratch.training import checkpoint
from lstm_scratch.training.config import TrainConfig
from lstm_scratch.training.loading import load_model


def assert_greedy(run_dir, prime, printed):
    """``printed`` (what ``sample --temperature 0`` wrote: the prime, then the generated text, then
    a newline) checked against an oracle that shares none of the sampling code: one teacher-forced
    forward over the whole text from a zero state, where each generated character must be the
    argmax of the logits at the position before it."""
    model, vocab, _ = load_model(run_dir)
    assert printed.startswith(prime) and printed.endswith("\n")
    ids = vocab.encode(printed[:-1])  # (T,) prime + generated
    logits, _, _ = model.forward(ids[:-1].reshape(-1, 1))  # (T-1, 1, V): logits[t] predicts t+1
    logits = logits[len(prime) - 1 :, 0]  # (N, V): those that predict the N generated characters
    runner_up, best = np.sort(logits, axis=1)[:, -2:].T  # (N,) each
    # sampling steps one character at a time, this forward runs the sequence: in float32 they
    # agree to about 1e-6, so a closer second would make the argmax a matter of rounding
    assert (best - runner_up).min() > 1e-3, "a near-tie: train this test's model in float64"
    assert vocab.decode(logits.argmax(axis=1)) == printed[len(prime) : -1]


def train_flags():
    """``train``'s flags as argparse holds them: {dest: (action, its --help group's title)}."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    train = sub.choices["train"]
    return {a.dest: (a, g.title) for g in train._action_groups for a in g._group_actions}


def test_every_train_setting_is_a_flag_with_its_sentence_default_and_choices():
    flags = train_flags()
    for option in dataclasses.fields(TrainConfig):
        action, group = flags.pop(option.name)
        assert action.option_strings == ["--" + option.name.replace("_", "-")]
        assert group == option.metadata["group"]
        assert action.default == "==SUPPRESS=="  # a flag not given leaves the preset's value
        assert action.choices == option.metadata["choices"]
        shown = option.metadata["shown"] or ("off" if option.default is False else option.default)
        assert action.help.startswith(option.metadata["help"]), option.name
        assert action.help.endswith(f"(default: {shown})"), option.name
    assert set(flags) == {"help", "out", "resume", "stop_after", "quiet"}
    for name in ("out", "resume", "stop_after", "quiet"):
        assert "(default: " in flags[name][0].help and flags[name][1] == "the run"


def test_help_is_plain_text_and_shows_every_default(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "``" not in out and "train, sample, eval, plot, export" in out
    code, out, _ = run(capsys, "train", "--help")
    text = " ".join(out.split())  # argparse wraps the lines
    assert code == 0
    assert "--hidden-size N units in each recurrent layer (default: 128)" in text
    assert "--lower lowercase the text before training (default: off)" in text
    assert "--steps N train for N steps; replaces a preset's --epochs (default: 1000" in text
    assert text.count("(default: ") == len(dataclasses.fields(TrainConfig)) + 4
    assert [line for line in out.splitlines() if line[:1].isalpha() and line.endswith(":")] == [
        "options:",
        "data:",
        "model:",
        "optimisation:",
        "the run:",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_hamlet_preset_memorises_the_passage(capsys, tmp_path, seed):
    code, out, _ = run(capsys, "train", "--seed", seed, "--quiet", "--out", tmp_path / "run")
    assert code == 0
    # the final model's figure, then the best checkpoint's when that is another step
    reported = re.findall(r"Accuracy, (final model|best checkpoint).*?: ([\d.]+)% teacher", out)
    assert reported and reported[0][0] == "final model", out
    assert float(reported[-1][1]) >= 99.0, out
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
    assert "Ground truth:" in out and "Predictions" in out and "sampled as the notebook did" in out


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_train_sample_eval_round_trip(capsys, tmp_path, text_file, cell):
    run_dir = tmp_path / "run"
    code, out, _ = run(
        capsys,
        "train",
        "--data",
        text_file,
        "--steps",
        30,
        "--eval-every",
        10,
        "--cell",
        cell,
        "--out",
        run_dir,
        *SMALL,
    )
    assert code == 0, out
    model, _, meta = load_model(run_dir)
    assert model.config.cell == meta["train_config"]["cell"] == cell
    assert {name.split(".")[0] for name in weights(run_dir)} == {"embedding", cell, "decoder"}
    assert {p.name for p in run_dir.iterdir()} >= {
        "model.safetensors",
        "train_state.safetensors",
        "metrics.jsonl",
        "best",
        "loss.png",
    }
    assert f"loss curves: {run_dir / 'loss.png'}" in out
    lines = metrics(run_dir)
    assert [m["step"] for m in lines] == [10, 20, 30]
    assert lines[-1]["val_loss"] < lines[0]["val_loss"]
    assert {"val_bpc", "val_perplexity", "val_accuracy", "train_loss", "lr"} <= set(lines[0])

    code, out, _ = run(capsys, "sample", run_dir, "--prime", "to be", "--length", 40, "--seed", 3)
    assert code == 0 and out.startswith("to be") and len(out.rstrip("\n")) == 45
    _, again, _ = run(capsys, "sample", run_dir, "--prime", "to be", "--length", 40, "--seed", 3)
    assert again == out
    _, greedy, _ = run(
        capsys, "sample", run_dir, "--prime", "to", "--temperature", 0, "--length", 20
    )
    assert_greedy(run_dir, "to", greedy)

    other = tmp_path / "other.txt"
    other.write_text("to be or not to be — ¿qué? 🙂", encoding="utf-8")
    code, out, _ = run(capsys, "eval", run_dir, "--data", other)
    assert code == 0
    assert re.search(
        r"4 characters not in the model's vocabulary were skipped \(4 distinct", out
    ), out
    assert "bits/char" in out and "perplexity" in out and "over 23 chars" in out


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_resume_gives_the_same_weights_bit_for_bit(capsys, tmp_path, text_file, cell):
    options = [
        "--cell",
        cell,
        "--data",
        text_file,
        "--steps",
        24,
        "--eval-every",
        8,
        "--dropout",
        0.2,
        "--schedule",
        "cosine",
        "--warmup-steps",
        3,
        *SMALL,
    ]
    assert run(capsys, "train", *options, "--out", tmp_path / "whole")[0] == 0
    assert run(capsys, "train", *options, "--out", tmp_path / "parts", "--stop-after", 11)[0] == 0
    assert checkpoint.load_train_state(tmp_path / "parts")[1]["step"] == 11
    assert run(capsys, "train", "--resume", tmp_path / "parts", "--quiet")[0] == 0
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert whole.keys() == parts.keys()
    for name in whole:
        assert np.array_equal(whole[name], parts[name]), name


def test_resume_with_more_steps_keeps_the_schedule(capsys, tmp_path, text_file):
    """Extending --steps on resume holds the schedule's final rate; it does not stretch it."""
    run_dir = tmp_path / "run"
    options = ["--schedule", "cosine", "--warmup-steps", 2, "--lr", 0.01, "--min-lr-ratio", 0.1]
    run(
        capsys,
        "train",
        "--data",
        text_file,
        "--steps",
        10,
        "--eval-every",
        5,
        "--out",
        run_dir,
        *options,
        *SMALL,
    )
    assert run(capsys, "train", "--resume", run_dir, "--steps", 20, "--quiet")[0] == 0
    lines = metrics(run_dir)
    assert [m["step"] for m in lines] == [5, 10, 15, 20]
    assert lines[1]["lr"] > 0.001
    assert lines[2]["lr"] == lines[3]["lr"] == pytest.approx(0.001)


def test_time_limit_stops_and_counts_per_call(capsys, tmp_path, text_file):
    run_dir = tmp_path / "run"
    code, out, _ = run(
        capsys,
        "train",
        "--data",
        text_file,
        "--steps",
        10**6,
        "--eval-every",
        5,
        "--time-limit",
        0.02,
        "--loss-reduction",
        "sum",
        "--out",
        run_dir,
        *SMALL,
    )
    assert code == 0 and "(time-limit)" in out
    first = metrics(run_dir)[0]
    assert first["train_loss"] < 2 * first["val_loss"]  # per character like val_loss, not a sum
    step = checkpoint.load_train_state(run_dir)[1]["step"]
    assert run(capsys, "train", "--resume", run_dir, "--stop-after", 5, "--quiet")[0] == 0
    assert checkpoint.load_train_state(run_dir)[1]["step"] == step + 5


def test_patience_stops_early_and_best_keeps_the_best(capsys, tmp_path, text_file):
    run_dir = tmp_path / "run"
    code, out, _ = run(
        capsys,
        "train",
        "--data",
        text_file,
        "--steps",
        400,
        "--eval-every",
        5,
        "--patience",
        2,
        "--lr",
        0.3,
        "--grad-clip",
        1000,
        "--out",
        run_dir,
        *SMALL,
    )
    assert code == 0 and "(early-stopping)" in out
    losses = {m["step"]: m["val_loss"] for m in metrics(run_dir)}
    steps = sorted(losses)
    assert steps[-1] < 400
    best_before = min(losses[s] for s in steps[:-2])
    assert all(losses[s] >= best_before for s in steps[-2:])
    best_step = min(steps, key=losses.get)
    assert checkpoint.load_checkpoint(run_dir / "best")[1]["step"] == best_step


def test_same_seed_same_numbers(capsys, tmp_path, text_file):
    options = [
        "train",
        "--data",
        text_file,
        "--steps",
        12,
        "--eval-every",
        6,
        "--dropout",
        0.1,
        *SMALL,
    ]
    run(capsys, *options, "--out", tmp_path / "a")
    run(capsys, *options, "--out", tmp_path / "b")
    run(capsys, *options, "--out", tmp_path / "c", "--seed", 5)
    a, b, c = (weights(tmp_path / n)["decoder.weight"] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)

    assert [m["val_loss"] for m in metrics(tmp_path / "a")] == [
        m["val_loss"] for m in metrics(tmp_path / "b")
    ]


def test_short_text_adapts_and_says_so(capsys, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hello world, hello lstm", encoding="utf-8")
    code, out, _ = run(
        capsys, "train", "--data", path, "--steps", 3, "--quiet", "--out", tmp_path / "run"
    )
    assert code == 0
    assert "too short" in out
    path.write_text("tiny text!", encoding="utf-8")  # 10 % of it is one character: no split
    code, out, _ = run(
        capsys, "train", "--data", path, "--steps", 3, "--quiet", "--out", tmp_path / "run2"
    )
    assert code == 0 and "validating on the training text" in out


@pytest.mark.parametrize(
    ("setup", "args", "fragments"),
    [
        (None, ["train", "--data", "{tmp}/missing.txt"], ["no such file"]),
        ("empty", ["train", "--data", "{tmp}/f"], ["empty"]),
        (None, ["train", "--data", "{tmp}"], ["directory"]),
        ("one", ["train", "--data", "{tmp}/f"], ["at least 2"]),
        ("latin1", ["train", "--data", "{tmp}/f"], ["offset 3", "--encoding"]),
        (None, ["train", "--hidden-size", "0"], ["--hidden-size", "positive"]),
        (None, ["train", "--batch-size", "-2"], ["--batch-size"]),
        (None, ["train", "--seq-len", "0"], ["--seq-len"]),
        (None, ["train", "--lr", "0"], ["--lr"]),
        (None, ["train", "--preset", "bogus"], ["unknown preset 'bogus'"]),
        (None, ["train", "--optimizer", "rmsprop"], ["rmsprop"]),
        (None, ["train", "--steps", "ten"], ["--steps"]),
        (None, ["sample", "{tmp}/nothing"], ["nothing"]),
        ("random", ["sample", "{tmp}/f"], ["cannot load"]),
        ("version", ["sample", "{tmp}/f"], ["format version 2"]),
        ("foreign", ["eval", "{tmp}/f", "--data", "{tmp}/f"], ["not an lstm-scratch"]),
        (None, ["train", "--resume", "{tmp}"], ["model.safetensors"]),
        (None, ["train", "--epochs", "inf"], ["--epochs", "finite"]),
        (None, ["train", "--lr", "nan"], ["--lr"]),
        (
            None,
            ["train", "--cell", "transformer"],
            ["--cell", "'transformer'", "'lstm', 'gru', 'rnn'"],
        ),
        (None, ["train", "--cell", "gru", "--forget-bias", "1"], ["a gru has none"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, setup, args, fragments):
    f = tmp_path / "f"
    if setup == "empty":
        f.write_bytes(b"")
    elif setup == "one":
        f.write_text("x")
    elif setup == "latin1":
        f.write_bytes("abc\xe9t\xe9".encode("latin-1"))
    elif setup == "random":
        f.write_bytes(np.random.default_rng(0).bytes(300))
    elif setup == "version":
        meta = {"format": "lstm-scratch", "format_version": 2, "role": "model"}
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(f), {"lstm_scratch": json.dumps(meta)})
    elif setup == "foreign":
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(f))
    code, _, err = run(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert_one_line_error(code, err, *fragments)


def test_checkpoint_errors_keep_the_checkpoint(capsys, tmp_path, text_file):
    run_dir = tmp_path / "run"
    assert run(capsys, "train", "--data", text_file, "--steps", 4, "--out", run_dir, *SMALL)[0] == 0
    before = (run_dir / "model.safetensors").read_bytes()
    code, _, err = run(capsys, "train", "--data", text_file, "--steps", 4, "--out", run_dir, *SMALL)
    assert_one_line_error(code, err, "already holds a checkpoint", "--resume")
    code, _, err = run(capsys, "train", "--resume", run_dir, "--hidden-size", "32")
    assert_one_line_error(code, err, "--hidden-size 32: this run was trained with 16")
    code, _, err = run(capsys, "sample", run_dir, "--prime", "XYZ")
    assert_one_line_error(code, err, "'X'", "'Y'", "'Z'")
    code, _, err = run(capsys, "sample", run_dir, "--top-p", "0")
    assert_one_line_error(code, err, "--top-p")
    for temperature in ("nan", "inf"):
        code, _, err = run(capsys, "sample", run_dir, "--temperature", temperature)
        assert_one_line_error(code, err, "--temperature")
    code, out, _ = run(capsys, "sample", run_dir, "--prime", "to", "--temperature", "1e-320")
    assert code == 0 and len(out.strip()) == 2 + 500  # tiny but valid: effectively greedy
    for option in ("--seq-len", "--batch-size"):
        code, _, err = run(capsys, "eval", run_dir, "--data", text_file, option, "0")
        assert_one_line_error(code, err, "must be >= 1")
    code, _, err = run(capsys, "train", "--resume", run_dir, "--preset", "hamlet")
    assert_one_line_error(code, err, "--preset hamlet: this run was trained without --preset")
    other = tmp_path / "other"
    assert run(capsys, "train", "--data", text_file, "--steps", 2, "--out", other, *SMALL)[0] == 0
    other_before = (other / "model.safetensors").read_bytes()
    code, _, err = run(capsys, "train", "--resume", run_dir, "--out", other, "--steps", 6)
    assert_one_line_error(code, err, "already holds a checkpoint")
    assert (other / "model.safetensors").read_bytes() == other_before
    assert (run_dir / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_at_the_step_it_stopped_and_resume_continues(tmp_path, text_file, sig, code):
    """A real process, a real signal: a checkpoint of the very step it stopped at, then exit."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "lstm_scratch",
        "train",
        "--data",
        str(text_file),
        "--steps",
        "100000",
        "--eval-every",
        "5",
        "--checkpoint-every",
        "100000",
        "--out",
        str(run_dir),
        *SMALL,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (run_dir / "model.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # well past that save
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    stopped = re.search(rf"\(step (\d+), {sig.name}\)", out)
    assert stopped, out
    step = checkpoint.load_train_state(run_dir)[1]["step"]
    assert step == int(stopped.group(1))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lstm_scratch",
            "train",
            "--resume",
            str(run_dir),
            "--steps",
            str(step + 3),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert checkpoint.load_train_state(run_dir)[1]["step"] == step + 3


def test_closed_pipe_is_not_a_traceback(capsys, tmp_path, text_file):
    run_dir = tmp_path / "run"
    assert run(capsys, "train", "--data", text_file, "--steps", 2, "--out", run_dir, *SMALL)[0] == 0
    command = [
        sys.executable,
        "-m",
        "lstm_scratch",
        "sample",
        str(run_dir),
        "--length",
        "100000",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(10)
    process.stdout.close()  # as `| head -c 10` does
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141 and b"Traceback" not in err, err


def test_plot_writes_a_png_of_the_loss_curves(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [
        {"step": s, "elapsed": 2.0 * s, "train_loss": 3 / s, "val_loss": 3.2 / s} for s in (1, 2, 3)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = run(capsys, "plot", run_dir)
    assert code == 0 and "loss.png" in out
    png = (run_dir / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("content", [None, "", "{not json\n", '{"step": 1}\n'])
def test_plot_of_a_folder_without_evaluations_is_a_one_line_error(tmp_path, capsys, content):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    code, _, err = run(capsys, "plot", tmp_path)
    assert_one_line_error(code, err)


def test_a_second_writer_on_a_run_folder_is_refused(tmp_path, capsys, text_file):
    from lstm_scratch.training.runs import RunLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = ["train", "--data", text_file, "--steps", "2", "--quiet", "--out", run_dir]
    with RunLock(run_dir):  # as a training process holding the folder would
        code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "is being trained by process", "choose another --out")
    assert not (run_dir / "model.safetensors").exists()
    # a lock file left by a process that died holds no lock: the folder is usable again
    (run_dir / ".lock").write_text("process 999999 on elsewhere\n")
    code, _, _ = run(capsys, *args)
    assert code == 0 and (run_dir / "model.safetensors").exists()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_nan_loss_stops_naming_the_step_or_skips_the_batch(
    tmp_path, capsys, text_file, monkeypatch, policy
):
    from lstm_scratch.model.charlm import CharLM

    real, calls = CharLM.loss_and_grads, []

    def poisoned(self, *args, **kwargs):  # the 5th batch's loss and gradients are NaN
        loss, grads, state = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            grads.flat[:] = np.nan
            return float("nan"), grads, state
        return loss, grads, state

    monkeypatch.setattr(CharLM, "loss_and_grads", poisoned)
    run_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "train",
        "--data",
        text_file,
        "--steps",
        "8",
        "--eval-every",
        "2",
        "--quiet",
        "--out",
        run_dir,
        "--on-nonfinite",
        policy,
    )
    if policy == "stop":
        assert_one_line_error(code, err, "the loss became nan at step 5", "is kept")
        assert checkpoint.load_checkpoint(run_dir)[1]["step"] == 4  # the last good checkpoint
    else:
        assert code == 0 and "step 5: the loss became nan; batch skipped (1 so far)" in out
        weights, meta = checkpoint.load_checkpoint(run_dir)
        assert meta["step"] == 8 and all(np.isfinite(w).all() for w in weights.values())


def test_a_full_disk_keeps_the_previous_checkpoint_whole(tmp_path, capsys, text_file, monkeypatch):
    import errno
    import os
    import stat

    real_fsync, run_dir = os.fsync, tmp_path / "run"

    def fsync(fd):  # once a checkpoint of step 4 is in place, the disk is full
        saved = run_dir / "model.safetensors"
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular and saved.exists() and checkpoint.load_checkpoint(run_dir)[1]["step"] >= 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    code, _, err = run(
        capsys,
        "train",
        "--data",
        text_file,
        "--steps",
        "9",
        "--eval-every",
        "100",
        "--checkpoint-every",
        "2",
        "--quiet",
        "--out",
        run_dir,
    )
    assert_one_line_error(code, err, "could not write", "No space left on device")
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(run_dir)[1]["step"] == 4
    assert checkpoint.load_train_state(run_dir)[1]["step"] == 4  # the same save: resumable
    assert not list(run_dir.glob(".*.tmp"))


FIXTURE = Path(__file__).parent.parent / "fixtures" / "lstm-run-before-cells"


def test_a_run_saved_before_cells_existed_loads_samples_and_resumes(capsys, tmp_path):
    """tests/fixtures/lstm-run-before-cells: a float64 LSTM run stopped at step 6 of 12 by the
    code before --cell (its configs have no "cell"), and that code's unstopped run's step-12
    weights. Today's code samples from it, scores it, and resumes it to those weights."""
    run_dir, text = tmp_path / "run", tmp_path / "hamlet.txt"
    shutil.copytree(FIXTURE, run_dir)
    text.write_text(HAMLET, encoding="utf-8")
    model, _, meta = load_model(run_dir)
    assert "cell" not in meta["model"] and model.config.cell == "lstm"
    code, out, _ = run(capsys, "sample", run_dir, "--prime", "to", "--length", 10, "--seed", 1)
    assert code == 0 and len(out) == 13
    assert run(capsys, "eval", run_dir, "--data", text)[0] == 0
    assert run(capsys, "train", "--resume", run_dir, "--data", text, "--quiet")[0] == 0
    resumed, expected = weights(run_dir), load_file(str(FIXTURE / "unstopped-step-12.safetensors"))
    assert resumed.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(resumed[name], expected[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("cell", "fragments"),
    [
        ("transformer", ["unknown cell 'transformer': choose from lstm, gru, rnn"]),
        ("gru", ["state dict mismatch: missing ['gru.weight_ih_l0'"]),
    ],
)
def test_a_checkpoint_whose_cell_does_not_fit_is_one_line(
    capsys, tmp_path, text_file, cell, fragments
):
    """A model file whose config names an unknown cell, or a cell its tensors are not: sample,
    eval and export say so in one line, exit 2."""
    run_dir, bad = tmp_path / "run", tmp_path / "bad"
    assert run(capsys, "train", "--data", text_file, "--steps", 2, "--out", run_dir, *SMALL)[0] == 0
    tensors, meta = checkpoint.load_checkpoint(run_dir)
    meta["model"]["cell"] = cell
    checkpoint.save_checkpoint(bad, tensors, meta)
    for args in (
        ["sample", bad],
        ["eval", bad, "--data", text_file],
        ["export", bad, "--to", "torch", tmp_path / "w.st"],
    ):
        code, _, err = run(capsys, *args)
        assert_one_line_error(
            code, err, "the checkpoint does not describe a usable model", *fragments
        )


def assert_greedy_tokens(run_dir, prime, printed):
    """``sample --temperature 0`` of a word or bpe model, against an oracle that shares none of
    the sampling code: from the prime's tokens, each next token is the argmax of one
    teacher-forced forward over all the tokens so far, and the printed text spells them."""
    model, vocab, _ = load_model(run_dir)
    ids, rest = list(vocab.encode(prime)), printed[len(prime) : -1]
    assert printed.startswith(prime) and printed.endswith("\n") and rest
    while rest:
        logits, _, _ = model.forward(np.array(ids).reshape(-1, 1))  # (T, 1, V)
        top = np.sort(logits[-1, 0])[-2:]
        assert top[1] - top[0] > 1e-6, "a near-tie"
        token = vocab.tokens[int(logits[-1, 0].argmax())]
        assert rest.startswith(token) or token.startswith(rest), (token, rest)  # cut at --length
        ids.append(int(logits[-1, 0].argmax()))
        rest = rest[len(token) :]


@pytest.mark.parametrize(("tokenizer", "size"), [("word", 40), ("bpe", 80)])
def test_word_and_bpe_runs_train_sample_eval_and_resume(
    capsys, tmp_path, text_file, tokenizer, size
):
    options = ["--data", text_file, "--tokenizer", tokenizer, "--vocab-size", size]
    options += ["--steps", 24, "--eval-every", 8, "--dropout", 0.2, "--dtype", "float64", *SMALL]
    code, out, _ = run(capsys, "train", *options, "--out", tmp_path / "whole")
    assert code == 0 and f"{size} {tokenizer} tokens, learnt from the training text" in out
    _, vocab, meta = load_model(tmp_path / "whole")
    assert (len(vocab), vocab.kind, meta["train_config"]["tokenizer"]) == (
        size,
        tokenizer,
        tokenizer,
    )
    last = metrics(tmp_path / "whole")[-1]
    assert last["val_chars"] > 1.2 * last["val_tokens"]  # per character: tokens span several
    assert last["val_loss"] == pytest.approx(
        last["val_token_loss"] * last["val_tokens"] / last["val_chars"], rel=1e-12
    )

    assert run(capsys, "train", *options, "--out", tmp_path / "parts", "--stop-after", 11)[0] == 0
    assert run(capsys, "train", "--resume", tmp_path / "parts", "--quiet")[0] == 0
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert all(np.array_equal(whole[name], parts[name]) for name in whole)

    sample = ["sample", tmp_path / "whole", "--prime", "to be", "--temperature", 0, "--length"]
    _, greedy, _ = run(capsys, *sample, 37)
    assert len(greedy) == len("to be") + 37 + 1  # characters, whatever the tokens
    assert_greedy_tokens(tmp_path / "whole", "to be", greedy)

    other = tmp_path / "other.txt"
    other.write_text("to be, or not to be: that is the question", encoding="utf-8")
    code, out, _ = run(capsys, "eval", tmp_path / "whole", "--data", other, "--batch-size", 1)
    assert code == 0, out
    ids, chars = vocab.encode_counted(other.read_text())
    scored = len(other.read_text()) - chars[0]  # one row: every token but the first a target
    assert f"over {scored} chars (per token:" in out and f"over {len(ids) - 1} {tokenizer}" in out


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--tokenizer", "wordpiece"], ["--tokenizer", "'wordpiece'", "'char', 'word', 'bpe'"]),
        (["--tokenizer", "bpe", "--vocab-size", "5"], ["--vocab-size 5", "alphabet", "at least"]),
        (["--tokenizer", "bpe", "--vocab-size", "90000"], ["supports at most"]),
        (["--tokenizer", "word", "--vocab-size", "90000"], ["supports at most"]),
        (["--vocab-size", "100"], ["--vocab-size", "--max-vocab"]),
        (["--tokenizer", "bpe", "--max-vocab", "10"], ["--max-vocab", "--vocab-size"]),
        (["--tokenizer", "bpe", "--vocab-size", "0"], ["--vocab-size", "positive"]),
    ],
)
def test_token_settings_that_cannot_work_are_one_line(capsys, tmp_path, text_file, args, fragments):
    code, _, err = run(capsys, "train", "--data", text_file, "--out", tmp_path / "r", *args)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_a_word_model_never_samples_unk_and_names_an_unknown_prime(capsys, tmp_path, text_file):
    options = ["--tokenizer", "word", "--vocab-size", 6, "--steps", 30, "--eval-every", 30]
    code, out, _ = run(capsys, "train", "--data", text_file, *options, *SMALL, "--out", tmp_path)
    assert code == 0 and "of the held-out tokens are [UNK]" in out  # 5 words: most are [UNK]
    _, vocab, _ = load_model(tmp_path)
    for seed in range(8):
        code, out, _ = run(capsys, "sample", tmp_path, "--length", 300, "--seed", seed)
        assert code == 0 and "[UNK]" not in out, out
        assert len(out) - 301 in {len(t) for t in vocab.tokens}  # a random first token, 300 more
        assert set(out[:-1]) <= set("".join(t for t in vocab.tokens if t != "[UNK]"))
    code, _, err = run(capsys, "sample", tmp_path, "--prime", "zebra")
    assert_one_line_error(code, err, "word(s) not in the vocabulary: 'zebra'")
    code, out, _ = run(capsys, "eval", tmp_path, "--data", text_file)
    assert code == 0 and re.search(r"scored as \[UNK\], \d+\.\d% of the tokens", out), out
