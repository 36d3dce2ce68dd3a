"""Fixtures shared by the tests."""

from pathlib import Path

import pytest

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
