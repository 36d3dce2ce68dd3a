"""Resuming as users do: the same command again with --resume, flags that repeat the run's
values, the run's text under another path, a run killed before its first checkpoint, and a
preset whose length a flag replaces."""

import shutil

import numpy as np
import pytest

from conftest import SMALL, assert_one_line_error, metrics, run, weights
from lstm_scratch.errors import ConfigError
from lstm_scratch.training import checkpoint
from lstm_scratch.training.config import make_config
from lstm_scratch.training.runs import RUN_FILE


def original(text, run_dir, steps=24):
    """A full training command line, as a user would type it."""
    return [
        "train",
        "--data",
        text,
        "--steps",
        steps,
        "--seed",
        11,
        "--eval-every",
        8,
        "--checkpoint-every",
        4,
        "--dropout",
        0.2,
        "--out",
        run_dir,
        *SMALL,
    ]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert np.array_equal(wa[name], wb[name]), name


def step_of(run_dir):
    return checkpoint.load_train_state(run_dir)[1]["step"]


def test_every_way_of_resuming_continues_the_same_run(capsys, tmp_path, text_file):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run(capsys, *original(text_file, whole))[0] == 0
    assert run(capsys, *original(text_file, parts), "--stop-after", 5)[0] == 0
    assert step_of(parts) == 5
    for again in (
        ["train", "--resume", parts],  # alone
        ["train", "--out", parts, "--resume", parts],  # with its own folder as --out
        [*original(text_file, parts), "--resume", parts],  # the whole command line again
    ):
        code, _, err = run(capsys, *again, "--stop-after", 6, "--quiet")
        assert code == 0 and not err, err
    assert step_of(parts) == 5 + 3 * 6
    assert run(capsys, *original(text_file, parts), "--resume", parts)[0] == 0
    assert step_of(parts) == 24
    assert_same_weights(whole, parts)
    # every evaluation of the unstopped run happened in the resumed one too, at the same step
    assert {m["step"] for m in metrics(parts)} >= {m["step"] for m in metrics(whole)} == {8, 16, 24}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", 8], "--batch-size 8: this run was trained with 4"),
        (["--lr", 0.1], "--lr 0.1: this run was trained with 0.002"),
        (["--lower"], "--lower: this run was trained without it"),
        (["--grad-clip", 1], "--grad-clip 1.0: this run was trained with 5.0"),
        (["--clip-value", 1], "--clip-value 1.0: this run was trained without --clip-value"),
        (["--preset", "shakespeare"], "--preset shakespeare: this run was trained without"),
        (["--seed", 12, "--num-layers", 1], "--seed 12: this run was trained with 11; --num-"),
        (["--cell", "gru"], "--cell gru: this run was trained with lstm"),
    ],
)
def test_a_changed_setting_is_named_with_both_values(capsys, tmp_path, text_file, flags, message):
    run_dir = tmp_path / "run"
    assert run(capsys, *original(text_file, run_dir), "--stop-after", 2)[0] == 0
    before = (run_dir / checkpoint.MODEL_FILE).read_bytes()
    code, _, err = run(capsys, *original(text_file, run_dir), *flags, "--resume", run_dir)
    assert_one_line_error(code, err, message, "only --on-nonfinite, --steps")
    assert (run_dir / checkpoint.MODEL_FILE).read_bytes() == before


def test_the_run_s_text_is_known_by_its_content(capsys, tmp_path, text_file):
    run_dir, moved = tmp_path / "run", tmp_path / "elsewhere" / "same.txt"
    assert run(capsys, *original(text_file, run_dir), "--stop-after", 2)[0] == 0
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text(encoding="utf-8") + "!", encoding="utf-8")
    code, _, err = run(capsys, "train", "--data", other, "--resume", run_dir)
    assert_one_line_error(code, err, f"--data {other}: not the text this run was trained on")
    # the same text under another path: accepted, and read from there from now on
    moved.parent.mkdir()
    shutil.move(text_file, moved)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--quiet")
    assert_one_line_error(code, err, f"no such file: {text_file}")
    code, _, err = run(
        capsys, "train", "--data", moved, "--resume", run_dir, "--stop-after", 2, "--quiet"
    )
    assert code == 0 and not err, err
    assert checkpoint.load_checkpoint(run_dir)[1]["train_config"]["data"] == str(moved)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--quiet", "--stop-after", 2)
    assert code == 0 and step_of(run_dir) == 6
    # a run's text that changed under it is refused, with or without --data
    moved.write_text(moved.read_text(encoding="utf-8").upper(), encoding="utf-8")
    code, _, err = run(capsys, "train", "--resume", run_dir)
    assert_one_line_error(code, err, f"{moved} has changed since this run was trained on it")
    code, _, err = run(capsys, "train", "--data", moved, "--resume", run_dir)
    assert_one_line_error(code, err, f"--data {moved}: the file changed since this run")
    code, _, err = run(capsys, "train", "--data", moved, "--resume", tmp_path / "hamlet-run")
    assert_one_line_error(code, err, "no such run", "without --resume")


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(capsys, tmp_path, text_file):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(capsys, *original(text_file, whole))[0] == 0
    assert run(capsys, *original(text_file, killed), "--stop-after", 3)[0] == 0
    assert (killed / RUN_FILE).exists()
    for saved in killed.glob("*.safetensors*"):  # as a kill before the first save leaves it
        saved.unlink()
    code, out, err = run(capsys, "train", "--resume", killed)
    assert code == 0, err
    assert f"{killed} stopped before its first checkpoint: starting it afresh" in out
    assert_same_weights(whole, killed)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "train", "--resume", empty)
    assert_one_line_error(code, err, "nothing to resume", "without --resume")


def test_a_flag_replaces_the_preset_s_length_and_its_twin(capsys, tmp_path):
    assert make_config("hamlet", steps=2).epochs is None
    assert make_config("shakespeare", epochs=0.5).steps is None
    assert make_config("hamlet").epochs == 1000
    with pytest.raises(ConfigError, match="not both"):
        make_config("hamlet", steps=2, epochs=3)
    code, out, _ = run(capsys, "train", "--steps", 2, "--quiet", "--out", tmp_path / "h")
    assert code == 0 and "checkpoint:" in out
    meta = checkpoint.load_checkpoint(tmp_path / "h")[1]
    assert meta["step"] == 2 and meta["train_config"]["epochs"] is None
    # on resume too: --steps replaces the run's epochs (the passage is one chunk an epoch)
    code, out, _ = run(capsys, "train", "--epochs", 3, "--quiet", "--out", tmp_path / "e")
    assert code == 0 and checkpoint.load_checkpoint(tmp_path / "e")[1]["step"] == 3
    assert run(capsys, "train", "--resume", tmp_path / "e", "--steps", 5, "--quiet")[0] == 0
    assert checkpoint.load_checkpoint(tmp_path / "e")[1]["step"] == 5
