"""A training text as a memory-mapped array of character ids, built in one streaming pass.

``corpus_ids(path, …)`` reads the file in blocks, twice: first the set of characters (the
vocabulary, sorted as ``Vocab.from_text`` sorts it), then the ids, written as raw integers of the
smallest unsigned type that holds them (uint8 up to 256 characters). That file is cached beside
the data (``.NAME.<key>.ids``, the vocabulary in ``….ids.vocab.json``; in
``~/.cache/lstm-scratch`` where the data's folder is read-only), keyed by the file's path, size,
modification time and inode, the encoding, lowercasing and the vocabulary given, so the next run
maps it at once. Training reads windows of it, so memory holds the model and the batch, not the
corpus. A file that changes while it is read is an error.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from lstm_scratch.errors import CheckpointError, DataError
from lstm_scratch.model.data import (
    MIN_TEXT_CHARS,
    Vocab,
    _code_points,
    _decode_error_message,
    _text_of,
    check_text_path,
)
from lstm_scratch.training import checkpoint

BLOCK_BYTES = 8 * 2**20
UNKNOWN = "\ufffd"  # the bucket of the characters left out by --max-vocab


def _blocks(path: Path, encoding: str, lower: bool):
    """Decoded text of ``path``, block by block (strict; the byte offset of a bad byte named)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    with path.open("rb") as file:
        while True:
            raw = file.read(BLOCK_BYTES)
            pending = len(getattr(decoder, "buffer", b"") or b"")  # bytes held from the last block
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as err:
                err.start += offset - pending
                raise DataError(_decode_error_message(path, encoding, err)) from None
            offset += len(raw)
            if text:
                yield text.lower() if lower else text
            if not raw:
                return


def _stamp(path: Path) -> tuple[int, int, int, int]:
    """What identifies this version of this file: size, modification time, device, inode."""
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_dev, info.st_ino


def _cache_path(path: Path, key: str) -> Path:
    beside = path.with_name(f".{path.name}.{key}.ids")
    if os.access(path.parent, os.W_OK):
        return beside
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstm-scratch"
    return folder / beside.name.lstrip(".")


def corpus_ids(
    path: str | Path,
    encoding: str = "utf-8",
    lower: bool = False,
    vocab: Vocab | None = None,
    max_vocab: int | None = None,
) -> tuple[Vocab, np.ndarray]:
    """(vocabulary, ids as a read-only memory map) of a text file; see the module docstring.

    ``vocab`` given (a resumed run): the ids are made with it, and a character outside it is a
    one-line error naming it. ``max_vocab``: keep the ``max_vocab - 1`` most frequent
    characters and map all others to one unknown bucket, ``UNKNOWN``.
    """
    path = check_text_path(path, encoding)
    stamp = _stamp(path)
    if stamp[0] == 0:
        raise DataError(f"{path} is empty")
    given = None if vocab is None else vocab.chars
    key = (str(path.resolve()), stamp, encoding, lower, given, max_vocab)
    digest = hashlib.sha256(repr(key).encode()).hexdigest()
    cache = _cache_path(path, digest[:16])
    vocab_file = cache.with_name(cache.name + ".vocab.json")
    try:
        if cache.exists() and vocab_file.exists():  # made by an earlier run: map it at once
            vocab = _read_vocab(vocab_file)
        else:
            if vocab is None:  # the first pass: which characters occur, how often
                vocab = _count_vocab(path, encoding, lower, max_vocab)
            bucket = UNKNOWN if max_vocab is not None else None
            _write_ids(path, encoding, lower, vocab, cache, bucket)
            checkpoint.atomic_write_bytes(vocab_file, json.dumps(vocab.to_json()).encode())
        if _stamp(path) != stamp:
            raise DataError(f"{path} changed while it was being read: try again once it is final")
        dtype = _id_dtype(vocab)
        size = cache.stat().st_size // dtype.itemsize
        ids = np.memmap(cache, dtype=dtype, mode="r", shape=(size,)) if size else np.zeros(0, dtype)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if len(ids) < MIN_TEXT_CHARS:
        raise DataError(f"{path} holds {len(ids)} character(s); at least {MIN_TEXT_CHARS} needed")
    return vocab, ids


def _read_vocab(vocab_file: Path) -> Vocab:
    try:
        return Vocab.from_json(json.loads(vocab_file.read_text(encoding="utf-8")))
    except (ValueError, CheckpointError):
        raise DataError(f"{vocab_file}: unreadable cache; delete it and run again") from None


def _count_vocab(path: Path, encoding: str, lower: bool, max_vocab: int | None) -> Vocab:
    """The sorted characters of the text; with ``max_vocab``, the ``max_vocab - 1`` most
    frequent (ties: the smaller code point) and the unknown bucket."""
    counts: dict[int, int] = {}
    for block in _blocks(path, encoding, lower):
        codes, numbers = np.unique(_code_points(block), return_counts=True)
        for code, number in zip(codes.tolist(), numbers.tolist(), strict=True):
            counts[code] = counts.get(code, 0) + number
    kept = sorted(counts)
    if max_vocab is not None and len(kept) > max_vocab - 1:
        kept = sorted(sorted(counts, key=lambda c: (-counts[c], c))[: max_vocab - 1])
    chars = list(_text_of(np.array(kept, dtype=np.uint32)))
    if max_vocab is not None and UNKNOWN not in chars:
        chars.append(UNKNOWN)
    return Vocab(chars)


def _write_ids(path: Path, encoding: str, lower: bool, vocab: Vocab, cache: Path, bucket) -> None:
    """The second pass: ids of every block appended to ``cache`` (written aside, then renamed);
    characters outside ``vocab`` go to ``bucket``'s id, or are an error without one."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
    with partial.open("wb") as file:
        for block in _blocks(path, encoding, lower):
            ids = vocab.encode(block) if bucket is None else vocab.encode_or(block, bucket)
            file.write(ids.astype(_id_dtype(vocab)).tobytes())
    os.replace(partial, cache)


def _id_dtype(vocab: Vocab) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    return np.dtype(
        next(
            t
            for t in (np.uint8, np.uint16, np.uint32)
            if len(vocab) <= 2 ** (8 * np.dtype(t).itemsize)
        )
    )
