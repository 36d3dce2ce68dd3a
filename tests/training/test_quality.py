"""Does it learn? A short run on real text beats the unigram baseline; a memorised sentence comes
back at temperature 0. Seconds each, run in CI."""

import math
from collections import Counter

import numpy as np

from lstm_scratch.training.config import make_config
from lstm_scratch.training.sample import sample
from lstm_scratch.training.train import train


def unigram_entropy(text: str) -> float:
    """nats/char of the best context-free model of ``text``: its own character frequencies."""
    counts = np.array(list(Counter(text).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_short_run_on_shakespeare_beats_the_unigram_entropy(tmp_path, shakespeare):
    text = shakespeare.read_text(encoding="utf-8")[:60_000]
    (tmp_path / "slice.txt").write_text(text, encoding="utf-8")
    config = make_config(
        data=str(tmp_path / "slice.txt"),
        hidden_size=96,
        num_layers=1,
        embed_size=16,
        batch_size=16,
        seq_len=48,
        steps=250,
        optimizer="adam",
        lr=4e-3,
        eval_every=250,
    )
    result = train(config, out=tmp_path / "run", quiet=True, log=lambda line: None)
    baseline = unigram_entropy(text[int(len(text) * 0.9) :])  # the validation slice
    assert baseline > 3.0  # about 3.3 nats/char for this text
    # measured: val loss about 2.0 after these 250 steps; a clear margin below the unigram model
    assert result.metrics["val_loss"] < baseline - 0.8, (result.metrics, baseline)


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
