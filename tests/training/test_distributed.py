"""Data-parallel training over MPI: N ranks give the weights of one process, resume across rank
counts, and a clear message when mpi4py is missing. Runs ``mpiexec -n 2`` and ``-n 3``."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import rel_error
from lstm_scratch.errors import ConfigError
from lstm_scratch.model.data import HAMLET
from lstm_scratch.training import distributed
from lstm_scratch.training.checkpoint import load_checkpoint

MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or not distributed.mpi4py_available(), reason="needs mpi4py and mpiexec"
)
# float64, two layers, dropout, an uneven split (B 5 over 3 ranks is 2, 1, 2 rows)
ARGS = [
    "--hidden-size",
    "12",
    "--num-layers",
    "2",
    "--embed-size",
    "6",
    "--dropout",
    "0.2",
    "--batch-size",
    "5",
    "--seq-len",
    "16",
    "--dtype",
    "float64",
    "--optimizer",
    "adam",
    "--lr",
    "3e-3",
    "--eval-every",
    "10",
    "--seed",
    "3",
]


def train(tmp_path, ranks, out, *extra):
    """``lstm-scratch train`` on ``ranks`` processes; ``out`` None: ``extra`` holds --resume."""
    text = tmp_path / "text.txt"
    if not text.exists():
        text.write_text(HAMLET * 3, encoding="utf-8")
    command = [sys.executable, "-m", "lstm_scratch", "train", "--quiet", *extra]
    if out is not None:
        command += ["--data", str(text), *ARGS, "--out", str(out)]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def weights(folder):
    return load_checkpoint(folder)[0]


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize(
    "ranks, reduction, cell, tokenizer",
    [
        (2, "mean", "lstm", "char"),
        (3, "mean", "lstm", "char"),
        (2, "sum", "lstm", "char"),
        (3, "mean", "gru", "char"),
        (3, "mean", "lstm", "bpe"),
    ],
)
def test_ranks_give_the_weights_and_metrics_of_one_process(
    tmp_path, ranks, reduction, cell, tokenizer
):
    """Weights and every reported figure, the training loss included: each rank's loss enters
    the global one by its share of the batch (rows split 3 + 2 or 2 + 1 + 2). The one-process
    run is held to torch in tests/training/test_trainer.py. With bpe tokens every rank learns
    the tokenizer from the text itself, and all must learn the same one."""
    length = ["--steps", "20", "--loss-reduction", reduction, "--cell", cell]
    length += ["--tokenizer", tokenizer] + (["--vocab-size", "60"] if tokenizer == "bpe" else [])
    train(tmp_path, 1, tmp_path / "one", *length)
    out = train(tmp_path, ranks, tmp_path / "many", *length)
    assert out.count("checkpoint:") == 1  # rank 0 alone reports
    one, many = weights(tmp_path / "one"), weights(tmp_path / "many")
    for name in one:
        assert rel_error(many[name], one[name]) <= 1e-12, name
    timing = {"elapsed", "chars_per_s", "ranks", "allreduce_fraction"}
    lines = metrics(tmp_path / "many")
    assert [m["step"] for m in lines] == [10, 20] and all(m["ranks"] == ranks for m in lines)
    for alone, together in zip(metrics(tmp_path / "one"), lines, strict=True):
        assert set(together) - set(alone) == {"ranks", "allreduce_fraction"}
        for key in set(alone) - timing:
            assert together[key] == pytest.approx(alone[key], rel=1e-12, abs=1e-15), key


@needs_mpi
@pytest.mark.slow
def test_a_run_saved_under_two_ranks_resumes_under_three(tmp_path):
    train(tmp_path, 1, tmp_path / "one", "--steps", "20")
    train(tmp_path, 2, tmp_path / "run", "--steps", "20", "--stop-after", "8")
    train(tmp_path, 3, None, "--resume", str(tmp_path / "run"))
    one, resumed = weights(tmp_path / "one"), weights(tmp_path / "run")
    for name in one:
        assert rel_error(resumed[name], one[name]) <= 1e-12, name


def test_one_rank_without_mpiexec(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    comm = distributed.world()
    assert (comm.rank, comm.size, comm.rows_of(7)) == (0, 1, (0, 7))
    grads = np.ones(4)
    assert distributed.sum_gradients(comm, grads, 2.5, 0.5) == 2.5 and grads.sum() == 4


def test_mpiexec_without_mpi4py_says_how_to_enable_it(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(distributed, "mpi4py_available", lambda: False)
    with pytest.raises(ConfigError, match=r"lstm-scratch\[mpi\]"):
        distributed.world()
