"""Fixtures shared by the CLI tests."""

import pytest

from lstm_scratch.data import HAMLET


@pytest.fixture
def text_file(tmp_path):
    """A short training text: the Hamlet passage twice and one more line."""
    path = tmp_path / "text.txt"
    path.write_text(
        HAMLET * 2 + "\nAnd Ophelia, nymph, in thy orisons be all my sins remember'd.\n",
        encoding="utf-8",
    )
    return path
