"""What the tests share: the gradient checker (central differences in float64 and a relative
error), the command-line helpers, and the fixtures for training texts. Test files import the
helpers with ``from conftest import …`` (tests/ is on pytest's pythonpath)."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from lstm_scratch.app.cli import main
from lstm_scratch.model.data import HAMLET

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture
def text_file(tmp_path):
    """A short training text: the Hamlet passage twice and one more line."""
    path = tmp_path / "text.txt"
    path.write_text(
        HAMLET * 2 + "\nAnd Ophelia, nymph, in thy orisons be all my sins remember'd.\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def shakespeare() -> Path:
    """The path of tinyshakespeare.txt in ../shared/data beside the project. CI always has it, so
    a test that asks for it fails, not skips, where it is missing."""
    if not SHAKESPEARE.is_file():
        pytest.fail(
            f"tinyshakespeare.txt not found at {SHAKESPEARE}: the tests that read it expect the "
            "shared data folder beside the project, as CI has it (the file is char-rnn's "
            "data/tinyshakespeare/input.txt)",
            pytrace=False,
        )
    return SHAKESPEARE


# the gradient checker


def numeric_gradient(loss_fn, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences (f(a+ε) − f(a−ε)) / 2ε of the scalar ``loss_fn()`` w.r.t. each entry
    of ``array``, which is perturbed in place and restored."""
    grad = np.zeros(array.shape, dtype=np.float64)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        plus = loss_fn()
        array[index] = saved - eps
        minus = loss_fn()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def rel_error(actual, expected) -> float:
    """max |actual − expected| / max |expected|: the error relative to the tensor's scale."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-300)
    return float(np.abs(actual - expected).max() / scale)


# the command line

SMALL = [
    "--hidden-size",
    "16",
    "--num-layers",
    "2",
    "--embed-size",
    "8",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--quiet",
]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def metrics(folder):
    """The evaluations a run wrote to its metrics.jsonl, in order."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
