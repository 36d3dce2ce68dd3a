"""The memory-mapped corpus: the same ids as encoding the whole text, built block by block."""

import numpy as np
import pytest

from lstm_scratch.errors import DataError
from lstm_scratch.model.data import Vocab
from lstm_scratch.training import corpus

TEXT = "Ünïcödé ÀND ascii—mixed 😀 across blocks.\nSecond LINE, ü and ß.\n" * 7


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 7)  # multi-byte characters straddle the blocks


@pytest.mark.parametrize("lower", [False, True])
def test_same_vocab_and_ids_as_the_whole_text(tmp_path, small_blocks, lower):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    vocab, ids = corpus.corpus_ids(path, lower=lower)
    text = TEXT.lower() if lower else TEXT
    assert vocab == Vocab.from_text(text)
    np.testing.assert_array_equal(ids, vocab.encode(text))
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint8 and not ids.flags.writeable


def test_the_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    corpus.corpus_ids(path)
    caches = list(tmp_path.glob(".t.txt.*.ids"))
    assert len(caches) == 1
    monkeypatch.setattr(corpus, "_write_ids", lambda *a: pytest.fail("rebuilt a valid cache"))
    corpus.corpus_ids(path)
    monkeypatch.undo()
    path.write_text(TEXT + "new", encoding="utf-8")
    vocab, ids = corpus.corpus_ids(path)
    assert vocab.decode(ids).endswith("new") and len(list(tmp_path.glob(".t.txt.*.ids"))) == 2


def test_read_only_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    monkeypatch.setattr(corpus.os, "access", lambda *a: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    corpus.corpus_ids(path)
    assert not list(tmp_path.glob(".t.txt.*")) and list((tmp_path / "cache").rglob("t.txt.*.ids"))


def test_bad_utf8_names_the_byte_offset_across_blocks(tmp_path, small_blocks):
    path = tmp_path / "t.txt"
    path.write_bytes("héllo wörld".encode() + b"\xff" + b" tail")
    with pytest.raises(DataError, match=r"first bad byte at offset 13\)"):
        corpus.corpus_ids(path)


def test_a_file_changing_while_read_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    stamps = iter([(100, 1), (101, 2)])
    monkeypatch.setattr(corpus, "_stamp", lambda p: next(stamps))
    with pytest.raises(DataError, match="changed while it was being read"):
        corpus.corpus_ids(path)


def test_large_vocabularies_use_wider_ids_and_unknown_characters_are_named(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(chr(0x4E00 + i) for i in range(300)) * 2, encoding="utf-8")
    vocab, ids = corpus.corpus_ids(path)
    assert len(vocab) == 300 and ids.dtype == np.uint16
    with pytest.raises(DataError, match="not in the vocabulary"):
        corpus.corpus_ids(path, vocab=Vocab(list("abc")))


def test_max_vocab_keeps_the_most_frequent_and_buckets_the_rest(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("aaaabbbc" * 5 + "xyz", encoding="utf-8")
    vocab, ids = corpus.corpus_ids(path, max_vocab=3)
    assert vocab.chars == ["a", "b", corpus.UNKNOWN]
    assert vocab.decode(ids) == ("aaaabbb" + corpus.UNKNOWN) * 5 + corpus.UNKNOWN * 3


def test_poisoned_texts_train(tmp_path, capsys):
    """NUL bytes, one 10 MB line, and 50,000 distinct characters (said so, then bucketed)."""
    from lstm_scratch.app.cli import main

    cases = {
        "nul.txt": "a\0b\0" * 500,
        "line.txt": "one endless line without a newline " * 300_000,
        "wide.txt": "".join(chr(0x4E00 + i % 25_000) + chr(0x10000 + i) for i in range(25_000)),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    small = "--hidden-size 8 --num-layers 1 --embed-size 4 --steps 2 --batch-size 4"
    small = [*small.split(), "--seq-len", "16", "--quiet", "--val-fraction", "0.01"]
    for name in ("nul.txt", "line.txt", "wide.txt"):
        out = str(tmp_path / f"run-{name}")
        assert main(["train", "--data", str(tmp_path / name), *small, "--out", out]) == 0
    assert "50,000 distinct characters" in capsys.readouterr().out
    args = ["train", "--data", str(tmp_path / "wide.txt"), *small, "--max-vocab", "500"]
    assert main([*args, "--out", str(tmp_path / "w2")]) == 0
    assert "distinct characters" not in capsys.readouterr().out
