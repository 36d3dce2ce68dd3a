"""Does it learn? A one-minute run on real text beats the unigram baseline, with characters and
with bpe tokens; a memorised sentence comes back at temperature 0. Run in CI."""

import math
from collections import Counter

import numpy as np
import pytest

from lstm_scratch.training.config import make_config
from lstm_scratch.training.sample import sample
from lstm_scratch.training.train import train


def unigram_entropy(text: str) -> float:
    """nats/char of the best context-free model of ``text``: its own character frequencies."""
    counts = np.array(list(Counter(text).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_per_char(train_ids, val_ids, val_chars, size: int) -> float:
    """nats/char of a context-free model of tokens: the training part's token frequencies (plus
    one each), scored on the held-out tokens and divided by the characters they spell."""
    counts = np.bincount(train_ids, minlength=size) + 1.0  # (V,)
    logp = np.log(counts / counts.sum())
    return float(-logp[val_ids].sum() / val_chars.sum())


@pytest.mark.slow
@pytest.mark.parametrize(("tokenizer", "margin"), [("char", 1.2), ("bpe", 0.7)])
def test_a_one_minute_run_beats_the_unigram_entropy(tmp_path, shakespeare, tokenizer, margin):
    """A one-minute run on the whole of tinyshakespeare, its cosine by time: per character, well
    below the best context-free model of the same tokens. Measured alone on 2 cores: char 1.60
    against 3.34, bpe 1.57 against 2.65 nats/char."""
    config = make_config(
        data=str(shakespeare),
        tokenizer=tokenizer,
        vocab_size=512 if tokenizer == "bpe" else None,
        hidden_size=128,
        num_layers=1,
        embed_size=32,
        batch_size=32,
        seq_len=64,
        lr=4e-3,
        schedule="cosine",
        schedule_by="time",
        time_limit=1.0,
        eval_every=100_000,
    )
    result = train(config, out=tmp_path / "run", quiet=True, log=lambda line: None)
    text = shakespeare.read_text(encoding="utf-8")
    n_train = len(text) - round(len(text) * 0.1)  # as training holds out the last 10 %
    train_text, val_text = text[:n_train], text[n_train:]
    if tokenizer == "char":
        baseline = unigram_entropy(val_text)
        assert baseline > 3.2  # about 3.3 nats/char
    else:
        vocab = result.vocab
        val_ids, val_chars = vocab.encode_counted(val_text)
        train_ids = vocab.encode_counted(train_text)[0]
        baseline = unigram_per_char(train_ids, val_ids, val_chars, len(vocab))
        assert 2.4 < baseline < 3.0  # about 2.64 nats/char for 512 tokens
    print(f"{tokenizer}: val loss {result.metrics['val_loss']:.3f}, unigram {baseline:.3f}")
    assert result.stopped_by == "done" and result.metrics["elapsed"] >= 59
    assert result.metrics["val_loss"] < baseline - margin, (result.metrics, baseline)


def test_a_memorised_sentence_comes_back_at_temperature_zero(tmp_path):
    sentence = "the quick brown fox jumps over the lazy dog. "
    (tmp_path / "s.txt").write_text(sentence * 40, encoding="utf-8")
    config = make_config(
        data=str(tmp_path / "s.txt"),
        hidden_size=32,
        num_layers=1,
        embed_size=8,
        batch_size=4,
        seq_len=45,
        steps=300,
        optimizer="adam",
        lr=1e-2,
        val_fraction=0.0,
        eval_every=300,
    )
    result = train(config, out=tmp_path / "run", quiet=True, log=lambda line: None)
    vocab, prime = result.vocab, "the quick"
    ids = sample(result.model, vocab.encode(prime), len(sentence) * 2 - len(prime), 0.0)
    assert prime + vocab.decode(ids) == sentence * 2
    assert math.isfinite(result.metrics["val_loss"])
