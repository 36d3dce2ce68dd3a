"""Text loading, the character vocabulary and the train/validation split.

Everything here is vectorised: a text is turned into its Unicode code points with one
``str.encode("utf-32-le")`` and ``np.frombuffer``, and characters are mapped to ids with
``np.searchsorted``, so a megabyte of text is encoded in milliseconds.
"""

from __future__ import annotations

import codecs
import hashlib
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lstm_scratch.errors import CheckpointError, ConfigError, DataError

#: The built-in training passage (Hamlet, act 3 scene 1), lowercased, on one line.
HAMLET = (
    "to be, or not to be, that is the question: whether "
    "'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, "
    "or to take arms against a sea of troubles "
    "and by opposing end them. to die—to sleep, "
    "no more; and by a sleep to say we end "
    "the heart-ache and the thousand natural shocks "
    "that flesh is heir to: 'tis a consummation "
    "devoutly to be wish'd. to die, to sleep; "
    "to sleep, perchance to dream—ay, there's the rub: "
    "for in that sleep of death what dreams may come, "
    "when we have shuffled off this mortal coil, "
    "must give us pause—there's the respect "
    "that makes calamity of so long life. "
    "for who would bear the whips and scorns of time, "
    "th'oppressor's wrong, the proud man's contumely, "
    "the pangs of dispriz'd love, the law's delay, "
    "the insolence of office, and the spurns "
    "that patient merit of th'unworthy takes, "
    "when he himself might his quietus make"
)

MIN_TEXT_CHARS = 2
_MAX_LISTED = 10
_CODE_DTYPE = np.dtype("<u4")


def check_text_path(path: str | Path, encoding: str) -> Path:
    """``path`` as a Path, once it names a file and ``encoding`` a codec; else a one-line error."""
    path = Path(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"unknown text encoding: {encoding!r}") from None
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a text file")
    if not path.is_file():
        kind = _file_kind(path)
        raise DataError(f"{path} is {kind}, not a regular file: save the text to a file first")
    return path


def _file_kind(path: Path) -> str:
    """What a path that is not a regular file or a folder is, in words."""
    mode = path.stat().st_mode
    kinds = [
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def file_sha256(path: str | Path, encoding: str = "utf-8") -> str:
    """The sha256 of a text file's bytes (read in blocks): what identifies a run's text."""
    path = check_text_path(path, encoding)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while block := file.read(8 * 2**20):
                digest.update(block)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    return digest.hexdigest()


def load_text(path: str | Path, encoding: str = "utf-8", lower: bool = False) -> str:
    """Read a whole text file; raise :class:`DataError` with a one-line message if unusable.

    The bytes are decoded strictly (no newline translation). ``lower=True`` lowercases.
    """
    path = check_text_path(path, encoding)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if not raw:
        raise DataError(f"{path} is empty")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(_decode_error_message(path, encoding, err)) from None
    if lower:
        text = text.lower()
    if len(text) < MIN_TEXT_CHARS:
        raise DataError(
            f"{path} holds {len(text)} character(s); at least {MIN_TEXT_CHARS} are needed"
        )
    return text


def _decode_error_message(path: Path, encoding: str, err: UnicodeDecodeError) -> str:
    """One line naming the offset of the first byte that does not decode."""
    name = codecs.lookup(encoding).name
    if name == "utf-8":
        return (
            f"{path} is not valid UTF-8 (first bad byte at offset {err.start}); "
            "pass --encoding with the file's encoding (e.g. --encoding latin-1)"
        )
    return f"{path} cannot be decoded as {encoding} (first bad byte at offset {err.start})"


def _code_points(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` as a uint32 array (no Python loop)."""
    data = text.encode("utf-32-le", "surrogatepass")
    return np.frombuffer(data, dtype=_CODE_DTYPE)


def _describe_chars(chars: Iterable[str]) -> str:
    """``'a', 'b', ... (and N more)`` with at most ``_MAX_LISTED`` characters shown."""
    chars = list(chars)
    shown = ", ".join(repr(c) for c in chars[:_MAX_LISTED])
    extra = len(chars) - _MAX_LISTED
    return shown + (f" (and {extra} more)" if extra > 0 else "")


class Vocab:
    """A fixed, ordered list of distinct characters; a character's id is its index."""

    def __init__(self, chars: Sequence[str]) -> None:
        problem = _vocab_problem(chars)
        if problem is not None:
            raise ValueError(f"invalid vocabulary: {problem}")
        self._chars = list(chars)
        self._codes = _code_points("".join(self._chars))
        self._order = np.argsort(self._codes, kind="stable").astype(np.int32)
        self._sorted_codes = self._codes[self._order]

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The vocabulary of the sorted distinct characters of ``text``."""
        codes = np.unique(_code_points(text))
        return cls(list(_text_of(codes)))

    @classmethod
    def from_json(cls, data: object) -> Vocab:
        """Inverse of :meth:`to_json`; raise :class:`CheckpointError` if ``data`` is invalid."""
        problem = _vocab_problem(data)
        if problem is not None:
            raise CheckpointError(f"invalid vocabulary in checkpoint: {problem}")
        return cls(data)  # type: ignore[arg-type]

    def to_json(self) -> list[str]:
        """The characters, in id order, as a JSON-ready list."""
        return list(self._chars)

    @property
    def chars(self) -> list[str]:
        """The characters in id order (a copy)."""
        return list(self._chars)

    def __len__(self) -> int:
        return len(self._chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._chars == other._chars

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Vocab({''.join(self._chars)!r})"

    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(code points, ids where known, mask of known characters)."""
        codes = _code_points(text)
        pos = np.searchsorted(self._sorted_codes, codes)
        np.minimum(pos, len(self._sorted_codes) - 1, out=pos)
        known = self._sorted_codes[pos] == codes
        return codes, self._order[pos], known

    def encode(self, text: str) -> np.ndarray:
        """Ids (int32) of every character; :class:`DataError` if any character is unknown."""
        codes, ids, known = self._lookup(text)
        if not known.all():
            unknown = _text_of(np.unique(codes[~known]))
            raise DataError(
                f"{len(unknown)} character(s) not in the vocabulary: {_describe_chars(unknown)}"
            )
        return ids

    def encode_or(self, text: str, unknown: str) -> np.ndarray:
        """Ids (int32) of every character, those not in the vocabulary mapped to ``unknown``'s."""
        _, ids, known = self._lookup(text)
        ids[~known] = self._order[np.searchsorted(self._sorted_codes, ord(unknown))]
        return ids

    def known(self, text: str) -> np.ndarray:
        """A bool per character of ``text``: in the vocabulary or not."""
        return self._lookup(text)[2]

    def encode_known(self, text: str) -> tuple[np.ndarray, Counter[str]]:
        """Ids (int32) of the known characters, and a Counter of the dropped unknown ones."""
        codes, ids, known = self._lookup(text)
        values, counts = np.unique(codes[~known], return_counts=True)
        unknown = Counter(dict(zip(_text_of(values), counts.tolist(), strict=True)))
        return ids[known], unknown

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids``; ``ValueError`` if an id is out of range."""
        ids = checked_ids(ids, len(self._chars))
        return _text_of(self._codes[ids]) if ids.size else ""


def checked_ids(ids, size: int) -> np.ndarray:
    """``ids`` as a flat integer array; ``ValueError`` unless each lies in [0, size)."""
    ids = np.asarray(ids).ravel()
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"ids must lie in [0, {size})")
    return ids


def _text_of(codes: np.ndarray) -> str:
    """Code points back to a string (inverse of :func:`_code_points`)."""
    return codes.astype(_CODE_DTYPE).tobytes().decode("utf-32-le", "surrogatepass")


def _vocab_problem(chars: object) -> str | None:
    """Why ``chars`` is not a valid vocabulary, or None when it is."""
    if not isinstance(chars, list | tuple):
        return f"expected a list of characters, got {type(chars).__name__}"
    if not chars:
        return "it is empty"
    bad = [c for c in chars if not (isinstance(c, str) and len(c) == 1)]
    if bad:
        return f"entries must be 1-character strings, got {_describe_chars(bad)}"
    if len(set(chars)) != len(chars):
        dupes = sorted(c for c, n in Counter(chars).items() if n > 1)
        return f"duplicate characters {_describe_chars(dupes)}"
    return None


def validation_size(length: int, val_fraction: float) -> int:
    """How many of ``length`` ids (or characters) the last ``val_fraction`` holds out; a
    :class:`DataError` when either part would keep fewer than 2."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {val_fraction}")
    n_val = round(length * val_fraction)
    if val_fraction > 0 and min(n_val, length - n_val) < MIN_TEXT_CHARS:
        raise DataError(
            f"a text of {length} characters is too short to hold out a validation "
            f"fraction of {val_fraction} (each part needs at least {MIN_TEXT_CHARS} characters)"
        )
    return n_val


def split_train_val(
    ids: np.ndarray, val_fraction: float, copy: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Split ids into (train, val): the last ``val_fraction`` of them is validation.

    Both parts are copies (views with ``copy=False``). ``val_fraction == 0`` gives an empty
    validation array. When validation is requested each part must keep at least 2 ids (one
    input/target pair).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    n_train = len(ids) - validation_size(len(ids), val_fraction)
    if copy:
        return ids[:n_train].copy(), ids[n_train:].copy()
    return ids[:n_train], ids[n_train:]
