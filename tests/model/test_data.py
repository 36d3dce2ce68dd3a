"""Tests of lstm_scratch.data: text loading, the vocabulary and the split."""

from __future__ import annotations

import errno
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lstm_scratch.errors import CheckpointError, ConfigError, DataError
from lstm_scratch.model.data import HAMLET, Vocab, load_text, split_train_val


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_hamlet_is_the_built_in_passage() -> None:
    assert len(HAMLET) == 866
    assert HAMLET == HAMLET.lower()
    assert "\n" not in HAMLET
    assert HAMLET.startswith("to be, or not to be, that is the question: whether 'tis")
    assert HAMLET.endswith("when he himself might his quietus make")
    assert HAMLET.count("—") == 3


def test_load_text_reads_and_lowercases(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes("Hello Wörld\r\n".encode())
    assert load_text(path) == "Hello Wörld\r\n"
    assert load_text(str(path), lower=True) == "hello wörld\r\n"


def test_load_text_other_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    assert load_text(path, encoding="latin-1") == "café au lait"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(DataError) as err:
        load_text(path)
    assert one_line(err) == f"no such file: {path}"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_text(tmp_path)
    assert "directory" in one_line(err)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("some text", encoding="utf-8")

    def denied(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError) as err:
        load_text(path)
    assert one_line(err) == f"cannot read {path}: {os.strerror(errno.EACCES)}"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_text(path)
    assert one_line(err) == f"{path} is empty"


def test_bad_utf8_names_offset_and_suggests_encoding(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello \xff world")
    with pytest.raises(DataError) as err:
        load_text(path)
    message = one_line(err)
    assert "offset 6" in message and "--encoding" in message


def test_bad_bytes_in_other_encoding(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abc\xffdef")
    with pytest.raises(DataError) as err:
        load_text(path, encoding="ascii")
    assert "offset 3" in one_line(err)


def test_unknown_encoding(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown text encoding"):
        load_text(path, encoding="no-such-codec")


def test_too_short(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_text(path)
    assert "at least 2" in one_line(err)


def test_vocab_from_text_and_round_trip() -> None:
    vocab = Vocab.from_text(HAMLET)
    assert vocab.chars == sorted(set(HAMLET))
    assert len(vocab) == len(set(HAMLET))
    ids = vocab.encode(HAMLET)
    assert ids.dtype == np.int32 and ids.shape == (len(HAMLET),)
    assert vocab.decode(ids) == HAMLET
    assert vocab.decode(ids.tolist()) == HAMLET
    assert vocab.decode(np.zeros(0, dtype=np.int64)) == ""


def test_vocab_keeps_given_order_and_astral_chars() -> None:
    vocab = Vocab(["z", "a", "😀", "é"])
    assert vocab.encode("a😀zé").tolist() == [1, 2, 0, 3]
    assert vocab.decode([3, 2, 1, 0]) == "é😀az"


def test_encode_unknown_characters_are_named() -> None:
    vocab = Vocab.from_text("abc")
    with pytest.raises(DataError) as err:
        vocab.encode("abxcy")
    assert one_line(err) == "2 character(s) not in the vocabulary: 'x', 'y'"


def test_encode_lists_at_most_ten_unknown() -> None:
    vocab = Vocab.from_text("ab")
    with pytest.raises(DataError) as err:
        vocab.encode("cdefghijklmnopq\n")
    message = one_line(err)
    assert "(and 6 more)" in message and "'\\n'" in message


def test_encode_known_drops_and_counts() -> None:
    vocab = Vocab.from_text("abc ")
    ids, unknown = vocab.encode_known("a xbxc yx")
    assert vocab.decode(ids) == "a bc "
    assert ids.dtype == np.int32
    assert unknown == Counter({"x": 3, "y": 1})
    ids, unknown = vocab.encode_known("abc")
    assert unknown == Counter() and ids.tolist() == [1, 2, 3]


def test_decode_rejects_out_of_range() -> None:
    vocab = Vocab.from_text("abc")
    with pytest.raises(ValueError):
        vocab.decode([0, 3])
    with pytest.raises(ValueError):
        vocab.decode([-1])


def test_vocab_json_round_trip() -> None:
    vocab = Vocab.from_text(HAMLET)
    assert Vocab.from_json(vocab.to_json()) == vocab


@pytest.mark.parametrize(
    "data",
    [None, "abc", {"a": 1}, [], ["a", "bc"], ["a", 1], ["a", ""], ["a", "b", "a"]],
)
def test_vocab_json_validation(data: object) -> None:
    with pytest.raises(CheckpointError) as err:
        Vocab.from_json(data)
    assert one_line(err).startswith("invalid vocabulary in checkpoint")


def test_split_train_val() -> None:
    ids = np.arange(100, dtype=np.int32)
    train, val = split_train_val(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert train.dtype == val.dtype == np.int32
    train, val = split_train_val(ids, 0.0)
    assert len(train) == 100 and val.shape == (0,) and val.dtype == np.int32
    train[0] = 7
    assert ids[0] == 0


def test_split_rejects_bad_fraction_and_tiny_text() -> None:
    ids = np.arange(10, dtype=np.int32)
    for fraction in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError):
            split_train_val(ids, fraction)
    with pytest.raises(DataError):
        split_train_val(ids, 0.01)


def test_encode_large_corpus(shakespeare: Path) -> None:
    text = load_text(shakespeare)
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text) and ids.dtype == np.int32
    assert vocab.decode(ids[:1000]) == text[:1000]
    train, val = split_train_val(ids, 0.1)
    assert len(train) + len(val) == len(ids)
