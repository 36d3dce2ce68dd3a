"""Word and BPE tokens, made by Hugging Face ``tokenizers`` and kept as its JSON.

A :class:`TokenVocab` is trained on the training text only. Its pre-tokenizer cuts the text into
letters, digits, other symbols and whitespace, and keeps every piece (nothing is dropped or
normalised), so the tokens of a text joined back together are the text: a sample reads as text.

- ``word``: each letter run, digit run, symbol and whitespace run is one token; the
  ``vocab_size - 1`` most frequent pieces are kept and the rest are ``[UNK]``.
- ``bpe``: byte-pair merges over the characters of the training text, within pieces that may
  start with one space (`` the``), up to ``vocab_size`` tokens. Every character of the
  training text is a token, so only a character the training text lacks is ``[UNK]``.

Scores are per character of the original text whatever the tokens, so that char, word and bpe
models compare: ``encode_counted`` gives each token the number of characters it stands for.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from lstm_scratch.errors import CheckpointError, ConfigError, DataError
from lstm_scratch.model.data import Vocab, checked_ids

TOKENIZERS = ("char", "word", "bpe")
UNKNOWN = "[UNK]"
DEFAULT_SIZE = {"word": 8192, "bpe": 1024}  # tokens, when --vocab-size is not given
_PIECES = {  # the pre-tokenizer's pattern: what a token never crosses
    "word": r"\p{L}+|\p{N}+|[^\s\p{L}\p{N}]|\s+",
    "bpe": r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
}


def _library():
    """The ``tokenizers`` package, or a one-line error saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(
            "word and bpe tokens need the tokenizers package: pip install 'lstm-scratch[tokens]'"
        ) from None
    return tokenizers


class TokenVocab:
    """A trained word or BPE tokenizer; a token's id is its index in the model's output."""

    def __init__(self, kind: str, tokenizer) -> None:
        self.kind = kind
        self._tokenizer = tokenizer
        self._strings = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
        self.unknown_id = tokenizer.token_to_id(UNKNOWN)
        singles = {s for s in self._strings if len(s) == 1}
        self._alphabet = Vocab(sorted(singles)) if kind == "bpe" and singles else None

    @classmethod
    def train(cls, kind: str, text: str, vocab_size: int | None) -> TokenVocab:
        """A ``kind`` tokenizer of ``vocab_size`` tokens learnt from ``text``; a one-line
        :class:`ConfigError` when the text cannot give that many, or the alphabet needs more."""
        lib = _library()
        alphabet = sorted(set(text))
        size = max(DEFAULT_SIZE[kind], len(alphabet) + 1) if vocab_size is None else vocab_size
        if kind == "bpe" and size < len(alphabet) + 1:
            raise ConfigError(
                f"--vocab-size {size} is smaller than the training text's alphabet: bpe needs at "
                f"least {len(alphabet) + 1} ({len(alphabet)} characters and {UNKNOWN})"
            )
        if kind == "word" and size < 2:
            raise ConfigError(
                f"--vocab-size {size}: word tokens need at least 2 ({UNKNOWN} and one)"
            )
        if kind == "bpe":
            model = lib.models.BPE(unk_token=UNKNOWN)
            trainer = lib.trainers.BpeTrainer(
                vocab_size=size,
                special_tokens=[UNKNOWN],
                initial_alphabet=alphabet,
                limit_alphabet=len(alphabet),
                show_progress=False,
            )
        else:
            model = lib.models.WordLevel(unk_token=UNKNOWN)
            trainer = lib.trainers.WordLevelTrainer(
                vocab_size=size, special_tokens=[UNKNOWN], show_progress=False
            )
        tokenizer = lib.Tokenizer(model)
        pattern = lib.Regex(_PIECES[kind])
        tokenizer.pre_tokenizer = lib.pre_tokenizers.Split(pattern, behavior="isolated")
        tokenizer.decoder = lib.decoders.Fuse()
        tokenizer.train_from_iterator([text], trainer)
        if vocab_size is not None and tokenizer.get_vocab_size() < size:
            raise ConfigError(
                f"--vocab-size {size}: the training text supports at most "
                f"{tokenizer.get_vocab_size()} {kind} tokens"
            )
        return cls(kind, tokenizer)

    @classmethod
    def from_json(cls, data: object) -> TokenVocab:
        """Inverse of :meth:`to_json`; :class:`CheckpointError` if ``data`` is not one."""
        if not (isinstance(data, dict) and data.get("tokenizer") in ("word", "bpe")):
            raise CheckpointError("invalid vocabulary in checkpoint: not a word or bpe tokenizer")
        lib = _library()
        try:
            tokenizer = lib.Tokenizer.from_str(json.dumps(data.get("json")))
        except Exception as error:  # the library raises a bare Exception on a bad file
            raise CheckpointError(f"invalid tokenizer in checkpoint: {error}") from None
        problem = _tokenizer_problem(data["tokenizer"], tokenizer)
        if problem is not None:
            raise CheckpointError(f"invalid tokenizer in checkpoint: {problem}")
        return cls(data["tokenizer"], tokenizer)

    def to_json(self) -> dict:
        """``{"tokenizer": kind, "json": the tokenizers library's own JSON}``."""
        return {"tokenizer": self.kind, "json": json.loads(self._tokenizer.to_str())}

    @property
    def tokens(self) -> list[str]:
        """The tokens' strings in id order (a copy)."""
        return list(self._strings)

    def __len__(self) -> int:
        return len(self._strings)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TokenVocab)
            and (self.kind, self._strings) == (other.kind, other._strings)
            and self.to_json() == other.to_json()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TokenVocab({self.kind!r}, {len(self)} tokens)"

    def known(self, text: str) -> np.ndarray:
        """A bool per character: one a bpe vocabulary has (every one for word tokens)."""
        if self._alphabet is None:
            return np.ones(len(text), dtype=bool)
        return self._alphabet.known(text)

    def _encoded(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,) int32, each token's [start, end) character offsets (N, 2))."""
        encoding = self._tokenizer.encode(text)
        ids = np.array(encoding.ids, dtype=np.int32)  # (N,)
        return ids, np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)  # (N, 2)

    def encode_counted(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids (int32), the characters of ``text`` each token stands for (int32))."""
        ids, offsets = self._encoded(text)
        return ids, (offsets[:, 1] - offsets[:, 0]).astype(np.int32)

    def encode(self, text: str) -> np.ndarray:
        """Ids (int32); :class:`DataError` naming what the vocabulary lacks: characters (bpe)
        or words (word tokens)."""
        ids, _, unknown = self.encode_known(text)
        if unknown:
            what = "character(s)" if self.kind == "bpe" else "word(s)"
            shown = ", ".join(repr(c) for c in sorted(unknown)[:10])
            raise DataError(f"{len(unknown)} {what} not in the vocabulary: {shown}")
        return ids

    def encode_known(self, text: str) -> tuple[np.ndarray, np.ndarray, Counter[str]]:
        """(ids, characters per id, a Counter of what is unknown): a bpe vocabulary drops the
        characters it lacks; word tokens keep an unknown word as [UNK], counted by the word."""
        unknown: Counter[str] = Counter()
        known = self.known(text)
        if not known.all():
            chars = np.array(list(text))  # (N,) one character each
            unknown.update(chars[~known].tolist())
            text = "".join(chars[known].tolist())
        ids, offsets = self._encoded(text)
        if self.kind == "word":
            unknown.update(text[s:e] for s, e in offsets[ids == self.unknown_id].tolist())
        return ids, (offsets[:, 1] - offsets[:, 0]).astype(np.int32), unknown

    def decode(self, ids) -> str:
        """The text of ``ids``: their tokens joined; ``ValueError`` if an id is out of range."""
        return "".join(self._strings[i] for i in checked_ids(ids, len(self._strings)).tolist())


def _tokenizer_problem(kind: str, tokenizer) -> str | None:
    """Why a loaded tokenizer is not one that ``TokenVocab.train`` makes, or None."""
    state = json.loads(tokenizer.to_str())
    if (state.get("model") or {}).get("type") != {"bpe": "BPE", "word": "WordLevel"}[kind]:
        return f"it says {kind} but holds a {(state.get('model') or {}).get('type')} model"
    if state.get("normalizer") is not None:
        return "it normalises the text, so its tokens would not join back to it"
    if tokenizer.token_to_id(UNKNOWN) is None:
        return f"it has no {UNKNOWN} token"
    strings = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    if any(not s for s in strings) or len(set(strings)) != len(strings):
        return "its ids are not 0..V-1, each one distinct, non-empty token"
    return None


def vocab_from_json(data: object) -> Vocab | TokenVocab:
    """A checkpoint's vocabulary: a list of characters, or a word or bpe tokenizer."""
    if isinstance(data, dict):
        return TokenVocab.from_json(data)
    return Vocab.from_json(data)
