"""Kill anywhere, lose nothing: SIGKILL at random moments and between the two renames of a save;
every resume ends with the weights of a run that was never killed, bit for bit."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lstm_scratch.errors import CheckpointError
from lstm_scratch.model.data import HAMLET
from lstm_scratch.training import checkpoint
from lstm_scratch.training.runs import RUN_FILE

ARGS = [
    "--hidden-size",
    "16",
    "--num-layers",
    "1",
    "--embed-size",
    "8",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--dropout",
    "0.1",
    "--dtype",
    "float64",
    "--seed",
    "5",
    "--checkpoint-every",
    "1",
    "--eval-every",
    "100",
    "--quiet",
]


def command(tmp_path, run_dir, steps):
    text = tmp_path / "text.txt"
    text.write_text(HAMLET * 4, encoding="utf-8")
    base = [sys.executable, "-m", "lstm_scratch", "train"]
    if (run_dir / checkpoint.MODEL_FILE).exists():
        return [*base, "--resume", str(run_dir), "--quiet"]
    return [*base, "--data", str(text), *ARGS, "--steps", str(steps), "--out", str(run_dir)]


def finish(tmp_path, run_dir, steps, env=None):
    done = subprocess.run(
        command(tmp_path, run_dir, steps), capture_output=True, text=True, env=env, timeout=300
    )
    return done


def final_weights(run_dir):
    weights, meta = checkpoint.load_checkpoint(run_dir)
    return weights, meta["step"]


def saved_step(run_dir):
    """The step of the newest save in ``run_dir``, or -1 before the first (or mid-write)."""
    try:
        return final_weights(run_dir)[1]
    except (CheckpointError, OSError):
        return -1


def kill_past(process, run_dir, step, rng, seconds=120.0):
    """SIGKILL ``process`` a random moment (0-20 ms) after its save of ``step`` or later: the
    moments are chosen by progress, so a fast host cannot finish the run before the kills.
    True when the kill landed, False when the process had already ended."""
    deadline = time.monotonic() + seconds
    while saved_step(run_dir) < step and process.poll() is None:
        assert time.monotonic() < deadline, f"no save of step {step} in {seconds} s"
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.02))  # within a step, a save or a rename
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    steps = 1200
    clean = finish(tmp_path, tmp_path / "clean", steps)
    assert clean.returncode == 0, clean.stderr
    run_dir, rng, kills = tmp_path / "killed", random.Random(1), 0
    for step in sorted(rng.sample(range(1, steps - 200), 6)):
        process = subprocess.Popen(
            command(tmp_path, run_dir, steps),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        kills += kill_past(process, run_dir, step, rng)
    assert kills == 6
    done = finish(tmp_path, run_dir, steps)
    assert done.returncode == 0, done.stderr
    (expected, step), (got, got_step) = final_weights(tmp_path / "clean"), final_weights(run_dir)
    assert got_step == step == steps
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name
    assert not list(run_dir.glob(".*.tmp"))  # partial writes of killed runs are cleaned up


def wait_for(path, process, seconds=60.0):
    """Until ``path`` exists (True), or the process has ended or the time is up (False)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@pytest.mark.slow
def test_the_same_command_with_resume_after_each_kill_ends_unstopped(tmp_path):
    """As a user would: after each SIGKILL, the whole original command line again with
    ``--resume RUN`` added. The first kill lands as soon as the run has written its settings,
    before its first checkpoint; the others at random moments past random saves. The run ends
    with the weights of one never stopped, bit for bit."""
    steps, run_dir, rng = 10_000, tmp_path / "killed", random.Random(3)
    text = tmp_path / "text.txt"
    text.write_text(HAMLET * 4, encoding="utf-8")
    args = [*ARGS[: ARGS.index("--checkpoint-every")], "--checkpoint-every", "200", "--quiet"]
    base = [sys.executable, "-m", "lstm_scratch", "train", "--data", str(text), *args]
    line = [*base, "--steps", str(steps), "--out", str(run_dir)]
    clean = subprocess.run(
        [*line[:-1], str(tmp_path / "clean")], capture_output=True, text=True, timeout=300
    )
    assert clean.returncode == 0, clean.stderr
    process = subprocess.Popen(line, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(run_dir / RUN_FILE, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kills, before_first_checkpoint = 1, not (run_dir / checkpoint.MODEL_FILE).exists()
    for step in sorted(rng.sample(range(1, steps - 2000), 5)):
        process = subprocess.Popen(
            [*line, "--resume", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        kills += kill_past(process, run_dir, step, rng)
    process = subprocess.Popen(
        [*line, "--resume", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    assert process.wait(timeout=300) == 0
    assert kills == 6 and before_first_checkpoint
    (expected, step), (got, got_step) = final_weights(tmp_path / "clean"), final_weights(run_dir)
    assert got_step == step == steps
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name


@pytest.mark.slow
def test_a_kill_between_the_two_renames_resumes_from_the_save_before(tmp_path):
    steps = 40
    clean = finish(tmp_path, tmp_path / "clean", steps)
    run_dir = tmp_path / "killed"
    env = {**os.environ, "LSTM_SCRATCH_FAULT": "between-renames:6"}
    killed = finish(tmp_path, run_dir, steps, env)
    assert clean.returncode == 0 and killed.returncode == -signal.SIGKILL
    with pytest.raises(CheckpointError, match="different saves"):  # a mixed pair was left
        checkpoint.load_train_state(run_dir)
    done = finish(tmp_path, run_dir, steps)
    assert done.returncode == 0, done.stderr
    assert "was interrupted: resuming from step 5" in done.stdout
    (expected, _), (got, got_step) = final_weights(tmp_path / "clean"), final_weights(run_dir)
    assert got_step == steps
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name


def test_two_interrupted_saves_in_a_row_still_leave_a_whole_set(tmp_path, monkeypatch):
    """A kill between the renames, a resume, and another kill there: the save before both is
    still whole in the .prev files (they are rotated only from a whole set)."""
    from lstm_scratch.training.checkpoint import load_resumable, save_checkpoint

    def save(step):
        weights = {"w": np.full(3, float(step))}
        save_checkpoint(tmp_path, weights, {"step": step}, {"s": np.zeros(1)}, {"step": step})

    def save_killed_between_renames(step):
        real = checkpoint.os.replace
        renamed = []

        def replace(source, target):  # the model file's rename never happens
            if str(target).endswith(checkpoint.MODEL_FILE) and renamed:
                raise SystemExit("killed")
            renamed.append(target)
            return real(source, target)

        monkeypatch.setattr(checkpoint.os, "replace", replace)
        with pytest.raises(SystemExit):
            save(step)
        monkeypatch.setattr(checkpoint.os, "replace", real)

    save(1)
    save(2)
    save_killed_between_renames(3)
    assert load_resumable(tmp_path)[1]["step"] == 2
    save_killed_between_renames(4)  # the next save, killed the same way
    weights, meta, _, state_meta, note = load_resumable(tmp_path)
    assert meta["step"] == state_meta["step"] == 2 and weights["w"][0] == 2.0 and note
