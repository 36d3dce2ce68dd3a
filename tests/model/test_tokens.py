"""Word and BPE tokens: learnt from the training text only, lossless, kept as JSON, and scored
per character of the text whatever the tokens."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_scratch.errors import CheckpointError, ConfigError, DataError
from lstm_scratch.model.charlm import CharLM, ModelConfig
from lstm_scratch.model.data import HAMLET, Vocab
from lstm_scratch.model.tokens import UNKNOWN, TokenVocab, vocab_from_json
from lstm_scratch.reference import ops
from lstm_scratch.training.config import make_config
from lstm_scratch.training.evaluate import evaluate
from lstm_scratch.training.runs import prepare_text

TEXT = HAMLET + "\nAnd Ophelia, nymph, in thy orisons be all my sins remember'd.\n"


@pytest.fixture(scope="module")
def bpe():
    return TokenVocab.train("bpe", TEXT, 120)


@pytest.fixture(scope="module")
def word():
    return TokenVocab.train("word", TEXT, 60)


def test_bpe_tokens_join_back_to_the_text_and_count_their_own_characters(bpe):
    ids, chars = bpe.encode_counted(TEXT)
    assert len(bpe) == 120 and len(ids) < 0.6 * len(TEXT)  # merges: fewer tokens than chars
    assert bpe.decode(ids) == TEXT
    # each token stands for its own string's characters, as the token list spells them
    assert chars.tolist() == [len(bpe.tokens[i]) for i in ids.tolist()]
    assert chars.sum() == len(TEXT)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=sorted(set(TEXT)), max_size=80))
def test_any_text_of_the_alphabet_round_trips(bpe, text):
    ids, chars = bpe.encode_counted(text)
    assert bpe.decode(ids) == text and chars.sum() == len(text)
    assert UNKNOWN not in [bpe.tokens[i] for i in ids.tolist()]


def test_word_tokens_keep_whitespace_and_symbols():
    text = "to be, or  not\n\nto be\n"
    vocab = TokenVocab.train("word", text * 3, 10)  # 9 distinct pieces and [UNK]
    ids, chars = vocab.encode_counted(text)
    pieces = [vocab.tokens[i] for i in ids.tolist()]
    assert pieces == ["to", " ", "be", ",", " ", "or", "  ", "not", "\n\n", "to", " ", "be", "\n"]
    assert vocab.decode(ids) == text and chars.tolist() == [len(p) for p in pieces]


def test_non_ascii_counts_characters_not_bytes():
    text = "ça va — très bien, ça va. " * 20
    vocab = TokenVocab.train("bpe", text, len(set(text)) + 10)
    ids, chars = vocab.encode_counted(text)
    assert vocab.decode(ids) == text and chars.sum() == len(text)


def test_the_tokenizer_learns_from_the_training_part_only(tmp_path):
    train_part = "the cat sat on the mat. " * 200
    held_out = "a zebra quoth: xylophone! " * 20  # letters and words the training part lacks
    path = tmp_path / "t.txt"
    path.write_text(train_part + held_out, encoding="utf-8")
    fraction = len(held_out) / len(train_part + held_out)
    for kind, size in (("bpe", 20), ("word", 8)):
        config = make_config(data=str(path), tokenizer=kind, vocab_size=size, val_fraction=fraction)
        text = prepare_text(config)
        tokens = text.vocab.tokens
        assert not any(c in "".join(tokens) for c in "zbqxy"), (kind, tokens)
        assert "zebra" not in tokens and "xylophone" not in tokens
        assert text.vocab.decode(text.train_ids) == train_part
        lacking = sum(c not in set(train_part) for c in held_out)  # z, b, q, u, x, y, l, p, !
        if kind == "bpe":  # left out, as eval leaves them out, and said so
            assert text.vocab.unknown_id not in text.val_ids
            assert text.val_chars.sum() == len(held_out) - lacking
            assert f"{lacking:,} characters of the held-out text are not in" in text.notes[-1]
        else:  # a word outside the vocabulary is [UNK], over its characters
            assert (text.val_ids == text.vocab.unknown_id).any()
            assert text.val_chars.sum() == len(held_out)
            assert "of the held-out tokens are [UNK]" in text.notes[-1]
        assert text.chars_per_token == pytest.approx(len(train_part) / len(text.train_ids))


def test_per_character_scores_against_a_count_by_hand(bpe):
    """evaluate's loss is the summed nats over the characters its targets spell: checked against
    one forward over the whole text and the characters counted from the token strings."""
    ids, chars = bpe.encode_counted(TEXT)
    config = ModelConfig(vocab_size=len(bpe), hidden_size=12, num_layers=2, dtype="float64")
    model = CharLM(config, seed=3)
    scores = evaluate(model, ids, batch_size=1, seq_len=25, chars=chars)
    logits, _, _ = model.forward(ids[:-1].reshape(-1, 1))  # (T, 1, V) one row, from zero
    logp = ops.log_softmax(logits[:, 0])  # (T, V)
    nats = -logp[np.arange(len(ids) - 1), ids[1:]].sum()
    spelled = sum(len(bpe.tokens[i]) for i in ids[1:].tolist())  # the targets' characters
    assert scores["chars"] == spelled and scores["tokens"] == len(ids) - 1
    assert scores["loss"] == pytest.approx(nats / spelled, rel=1e-12)
    assert scores["token_loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-12)
    assert scores["bpc"] == pytest.approx(nats / spelled / np.log(2), rel=1e-12)
    # characters: the same function with chars=None counts one per target
    char_vocab = Vocab.from_text(TEXT)
    char_ids = char_vocab.encode(TEXT)
    char_model = CharLM(ModelConfig(vocab_size=len(char_vocab), hidden_size=8), seed=1)
    plain = evaluate(char_model, char_ids, 1, 25)
    assert plain["chars"] == plain["tokens"] == len(TEXT) - 1


def test_unknown_characters_and_words_are_counted_once(bpe, word):
    text = "to be, or not to be: Xeñ. zebra."
    ids, chars, unknown = bpe.encode_known(text)
    assert unknown == {"X": 1, "ñ": 1}
    assert bpe.decode(ids) == "to be, or not to be: e. zebra." and chars.sum() == len(text) - 2
    ids, chars, unknown = word.encode_known(text)
    assert unknown["zebra"] == unknown["Xeñ"] == 1
    assert not set(unknown) & set(word.tokens) and set(unknown) <= {
        "to",
        "be",
        "or",
        "not",
        "Xeñ",
        "zebra",
    }
    assert chars.sum() == len(text)  # an unknown word is scored as [UNK], over its characters
    with pytest.raises(DataError, match="not in the vocabulary"):
        bpe.encode("Xeñ")


def test_json_round_trip_and_a_corrupt_one(bpe, word):
    for vocab in (bpe, word):
        data = json.loads(json.dumps(vocab.to_json()))
        again = vocab_from_json(data)
        assert again == vocab and again.kind == vocab.kind
        assert np.array_equal(again.encode_counted(TEXT)[0], vocab.encode_counted(TEXT)[0])
    assert isinstance(vocab_from_json(["a", "b"]), Vocab)
    bad_ones = [{"tokenizer": "sentencepiece"}, {"tokenizer": "bpe", "json": {"model": 3}}]
    for bad in [*bad_ones, {"tokenizer": "word"}]:
        with pytest.raises(CheckpointError):
            vocab_from_json(bad)
    gap = bpe.to_json()  # one token moved to id 500: ids 0..V-1 no longer each name one
    gap["json"]["model"]["vocab"][bpe.tokens[7]] = 500
    normalised = bpe.to_json()
    normalised["json"]["normalizer"] = {"type": "Lowercase"}
    for bad, says in [
        (gap, "not 0..V-1"),
        (normalised, "normalises"),
        ({**word.to_json(), "tokenizer": "bpe"}, "holds a WordLevel model"),
    ]:
        with pytest.raises(CheckpointError, match=says):
            vocab_from_json(bad)


def test_sizes_the_text_cannot_give_are_one_line_errors():
    alphabet = len(set(TEXT))
    with pytest.raises(ConfigError, match=f"at least {alphabet + 1}"):
        TokenVocab.train("bpe", TEXT, alphabet)
    with pytest.raises(ConfigError, match="supports at most"):
        TokenVocab.train("bpe", TEXT, 100_000)
    with pytest.raises(ConfigError, match="supports at most"):
        TokenVocab.train("word", TEXT, 10_000)
    assert len(TokenVocab.train("bpe", TEXT, alphabet + 1)) == alphabet + 1


def test_a_token_run_reports_its_training_loss_per_character(tmp_path):
    """The first step's reported loss is the mean loss per token of the first batch, computed
    here by hand from a model built alike, over the training text's characters per token."""
    from lstm_scratch.model.batches import ChunkedText
    from lstm_scratch.training.train import train

    path = tmp_path / "t.txt"
    path.write_text(TEXT * 3, encoding="utf-8")
    options = dict(data=str(path), tokenizer="bpe", vocab_size=90, hidden_size=12, num_layers=1)
    options |= dict(embed_size=6, batch_size=4, seq_len=10, steps=1, eval_every=1)
    config = make_config(**options, dtype="float64")
    result = train(config, out=tmp_path / "run", quiet=True, log=lambda line: None)
    text = prepare_text(config)
    inputs, targets = ChunkedText(text.train_ids, 4, 10).chunk(0)  # (T, B) each
    model = CharLM(config.model_config(len(text.vocab)), seed=config.seed)
    logits, _, _ = model.forward(inputs)  # (T, B, V)
    logp = ops.log_softmax(logits)
    per_token = -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
    n_train = len(TEXT * 3) - round(len(TEXT * 3) * 0.1)
    per_char = len(text.train_ids) / n_train  # tokens per character of the training text
    assert result.metrics["train_loss"] == pytest.approx(per_token * per_char, rel=1e-12)
    assert 1.5 < 1 / per_char < 4


def test_without_the_tokenizers_package_a_bpe_run_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)  # import raises
    with pytest.raises(ConfigError, match=r"pip install 'lstm-scratch\[tokens\]'"):
        TokenVocab.train("bpe", TEXT, 60)


def test_scores_follow_the_characters_of_each_row(bpe):
    """Three rows, chunks of 7: the per-character loss against each row run whole from a zero
    state, its targets' characters counted from the token strings."""
    ids, chars = bpe.encode_counted(TEXT)
    model = CharLM(ModelConfig(len(bpe), 10, 2, 4, dtype="float64"), seed=5)
    scores = evaluate(model, ids, batch_size=3, seq_len=7, chars=chars)
    per_row = (len(ids) - 1) // 3  # targets in each row; the rest are left over
    nats, spelled = 0.0, 0
    for start in np.arange(3) * per_row:
        row = ids[start : start + per_row + 1]
        logp = ops.log_softmax(model.forward(row[:-1].reshape(-1, 1))[0][:, 0])  # (T, V)
        nats -= logp[np.arange(per_row), row[1:]].sum()
        spelled += sum(len(bpe.tokens[i]) for i in row[1:].tolist())
    assert scores["tokens"] == 3 * per_row and scores["chars"] == spelled
    assert scores["loss"] == pytest.approx(nats / spelled, rel=1e-10)


def test_the_default_size_is_what_a_small_text_gives():
    for kind in ("word", "bpe"):
        vocab = TokenVocab.train(kind, HAMLET, None)
        assert 30 < len(vocab) < 1024 and vocab.decode(vocab.encode_counted(HAMLET)[0]) == HAMLET


def test_a_word_prime_outside_the_vocabulary_is_named(word):
    with pytest.raises(DataError, match="1 word\\(s\\) not in the vocabulary: 'zebra'"):
        word.encode("to be zebra")
