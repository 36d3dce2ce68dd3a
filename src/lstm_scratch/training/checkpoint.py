"""Checkpoints: safetensors tensors plus strict-JSON metadata, written atomically.

A checkpoint is a folder holding ``model.safetensors`` (the weights) and, optionally,
``train_state.safetensors`` (optimizer moments etc.). Each file's safetensors header carries
``__metadata__ = {"lstm_scratch": "<json>"}`` where the JSON object holds ``format``,
``format_version``, ``role`` ("model" or "train_state"), ``generation`` (a random token shared
by the two files of one save) and the caller's metadata. No pickle is involved anywhere.

Metadata must be plain JSON data (dict, list, str, int, float, bool, None); numpy scalars
and arrays are converted with ``.tolist()``, paths with ``os.fspath``; tuples come back as
lists, and NaN or infinity is refused (:class:`CheckpointError`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, safe_open

from lstm_scratch.errors import CheckpointError

FORMAT_NAME = "lstm-scratch"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
PREVIOUS = ".prev"  # the set saved before the newest, kept until the next save
TRAIN_STATE_FILE = "train_state.safetensors"
METADATA_KEY = "lstm_scratch"
RESERVED_KEYS = frozenset({"format", "format_version", "role", "generation"})
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_PARSE_ERRORS = (SafetensorError, ValueError, TypeError, KeyError, OverflowError)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file."""
    atomic_write_files({Path(path): data})


def atomic_write_files(files: dict[Path, bytes], keep_previous: bool = False) -> None:
    """Replace several files, each atomically, and none unless all could be written.

    Every file's bytes go to a temporary file in its folder, flushed and fsync'ed; only when all
    are written are they renamed over their targets (in the given order) and the folders
    fsync'ed. A failed write (a full disk, say) leaves every previous file untouched, removes the
    temporary files and raises :class:`CheckpointError`. ``keep_previous``: each file being
    replaced is first kept as ``NAME.prev`` (a hard link, itself renamed into place), so a kill
    between the renames still leaves one whole earlier set.
    """
    staged: dict[Path, Path] = {}  # target -> temporary file not yet renamed
    path = next(iter(files))
    try:
        for path, data in files.items():
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp, flags, 0o666)  # the usual umask applies (mkstemp would force 0600)
            staged[path] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if keep_previous:
            for path in files:
                if path.exists():
                    _keep_as_previous(path)
        for number, path in enumerate(files):  # the loop variable names the file in an error
            os.replace(staged.pop(path), path)
            if number == 0 and len(files) > 1:
                _fault_point("between-renames")
        for folder in {path.parent for path in files}:
            _fsync_dir(folder)
    except OSError as err:
        raise CheckpointError(f"could not write {path}: {err.strerror or err}") from None
    finally:
        for tmp in staged.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _keep_as_previous(path: Path) -> None:
    """``path`` also as ``path.prev``, replacing the older one atomically."""
    link = path.with_name(f".{path.name}.{secrets.token_hex(8)}.prev.tmp")
    try:
        try:
            os.link(path, link)
        except OSError:  # a file system without hard links: a copy does the same
            shutil.copyfile(path, link)
        os.replace(link, path.with_name(path.name + PREVIOUS))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(link)


_FAULT_POINTS_REACHED = {"count": 0}


def _fault_point(name: str) -> None:
    """Fault injection for the crash tests: with LSTM_SCRATCH_FAULT=NAME:N in the environment,
    the N-th time the process reaches the point NAME it kills itself (SIGKILL, as a power cut
    would end it: no handler, no cleanup). Unset, this does nothing."""
    fault = os.environ.get("LSTM_SCRATCH_FAULT", "")
    if not fault.startswith(name + ":"):
        return
    _FAULT_POINTS_REACHED["count"] += 1
    if _FAULT_POINTS_REACHED["count"] == int(fault.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    """Convert numpy scalars and arrays, and paths, met by ``json.dumps``."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_file(
    tensors: dict[str, np.ndarray], meta: dict, role: str, generation: str, path: Path
) -> bytes:
    """The safetensors bytes of one checkpoint file."""
    clash = RESERVED_KEYS.intersection(meta)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved")
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "role": role}
    header["generation"] = generation
    header.update(meta)
    try:
        text = json.dumps(header, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"could not write {path}: metadata is not strict JSON: {err}"
        ) from None
    arrays = {name: np.ascontiguousarray(t) for name, t in tensors.items()}
    return safetensors.numpy.save(arrays, metadata={METADATA_KEY: text})


def save_checkpoint(
    folder: str | Path,
    weights: dict[str, np.ndarray],
    meta: dict,
    train_tensors: dict[str, np.ndarray] | None = None,
    train_meta: dict | None = None,
) -> None:
    """Save weights (and optionally training state) into ``folder``, creating it.

    Both files are written in full before either replaces its predecessor (so a failed write
    keeps the previous pair), and share one fresh ``generation`` token so that a mixed pair,
    left by a kill between the two renames, is detected on load.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"could not create {folder}: {err.strerror or err}") from None
    generation = secrets.token_hex(16)
    model_path = folder / MODEL_FILE
    files = {}
    if train_tensors is not None or train_meta is not None:
        state_path = folder / TRAIN_STATE_FILE
        files[state_path] = _encode_file(
            train_tensors or {}, train_meta or {}, "train_state", generation, state_path
        )
    files[model_path] = _encode_file(weights, meta, "model", generation, model_path)
    # the set being replaced becomes the ``.prev`` set only when it is whole: after a kill
    # between two renames it is not, and the ``.prev`` set already holds the last whole one
    atomic_write_files(files, keep_previous=len(files) > 1 and _is_whole_set(folder))


def _check_header_length(path: Path) -> None:
    """Refuse files whose 8-byte header length cannot fit, before the library parses them."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise ValueError(f"file is too short ({size} bytes)")
    n = int.from_bytes(head[:8], "little")
    if n > size - 8 or n > _MAX_HEADER_BYTES:
        raise ValueError(f"header length {n} does not fit in a file of {size} bytes")
    if head[8:9] != b"{":
        raise ValueError("header is not a JSON object")


def _read_file(path: Path, role: str, with_tensors: bool = True) -> tuple[dict, dict]:
    """Validate and read one checkpoint file: (tensors, full JSON header)."""
    where = f"cannot load {path}"
    if not path.exists():
        raise CheckpointError(f"{where}: no such file")
    try:
        _check_header_length(path)
        with safe_open(path, framework="numpy") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except OSError as err:
        raise CheckpointError(f"{where}: {err.strerror or err}") from None
    except _PARSE_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{where}: not a valid safetensors file ({reason})") from None
    header = _parse_header(raw_meta, where)
    if header.get("role") != role:
        raise CheckpointError(f"{where}: expected a {role} file, found {header.get('role')!r}")
    for name, t in tensors.items():
        if np.issubdtype(t.dtype, np.inexact) and not np.isfinite(t).all():
            raise CheckpointError(f"{where}: tensor {name!r} contains NaN or infinity")
        if not t.flags.writeable:
            tensors[name] = t.copy()
    return tensors, header


def _parse_header(raw_meta: dict, where: str) -> dict:
    """Check our JSON metadata entry: format name and version."""
    text = raw_meta.get(METADATA_KEY)
    if text is None:
        raise CheckpointError(
            f"{where}: not an lstm-scratch checkpoint (no {METADATA_KEY} metadata)"
        )
    try:
        header = json.loads(text)
    except ValueError:
        raise CheckpointError(f"{where}: metadata is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{where}: not an lstm-scratch checkpoint")
    version = header.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"{where}: checkpoint format version {version} is not supported by this "
            f"lstm-scratch (reads {FORMAT_VERSION})"
        )
    if not isinstance(header.get("generation"), str):
        raise CheckpointError(f"{where}: metadata lacks the save generation")
    return header


def _model_path(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the model file inside the folder ``path``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    if path.is_dir():
        model = path / MODEL_FILE
        if not model.is_file():
            raise CheckpointError(f"{path} is not a checkpoint folder ({MODEL_FILE} missing)")
        return model
    return path


def _user_meta(header: dict) -> dict:
    return {k: v for k, v in header.items() if k not in RESERVED_KEYS}


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Load (weights, meta) from a checkpoint folder or its ``model.safetensors`` file.

    ``meta`` is what was passed to :func:`save_checkpoint` (the reserved keys removed).
    Arrays are writable. Every problem raises :class:`CheckpointError` naming the path.
    """
    weights, header = _read_file(_model_path(path), "model")
    return weights, _user_meta(header)


def load_train_state(folder: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Load (tensors, meta) of the training state saved alongside the model in ``folder``.

    ``folder`` may also be the model file. The state must come from the same save as the
    model file, else :class:`CheckpointError`.
    """
    model_path = _model_path(folder)
    state_path = model_path.parent / TRAIN_STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(
            f"no training state in {model_path.parent} ({TRAIN_STATE_FILE} missing)"
        )
    tensors, header = _read_file(state_path, "train_state")
    _, model_header = _read_file(model_path, "model", with_tensors=False)
    if header["generation"] != model_header["generation"]:
        raise CheckpointError(
            f"cannot load {state_path}: model and training state come from different saves"
        )
    return tensors, _user_meta(header)


def _is_whole_set(folder: Path) -> bool:
    """True when ``folder`` holds a model and training state from one save."""
    try:
        _, model = _read_file(folder / MODEL_FILE, "model", with_tensors=False)
        _, state = _read_file(folder / TRAIN_STATE_FILE, "train_state", with_tensors=False)
    except CheckpointError:
        return False
    return model["generation"] == state["generation"]


def load_resumable(folder: str | Path) -> tuple[dict, dict, dict, dict, str | None]:
    """(weights, meta, train tensors, train meta, note) of the newest whole save in ``folder``.

    That is the model and training state files when they come from one save; when a kill
    between their renames left them from different saves (or one is unreadable), the newest
    consistent pair among them and the ``.prev`` files of the save before; ``note`` then says
    so. :class:`CheckpointError` when there is none.
    """
    model_path = _model_path(folder)
    state_path = model_path.parent / TRAIN_STATE_FILE
    try:
        return (*load_checkpoint(model_path), *load_train_state(model_path), None)
    except CheckpointError as error:
        first_error = error
    candidates = [
        (
            model_path.with_name(model_path.name + PREVIOUS),
            state_path.with_name(state_path.name + PREVIOUS),
        ),
        (model_path, state_path.with_name(state_path.name + PREVIOUS)),
        (model_path.with_name(model_path.name + PREVIOUS), state_path),
    ]
    found = []
    for model_file, state_file in candidates:
        try:
            weights, model_header = _read_file(model_file, "model")
            tensors, state_header = _read_file(state_file, "train_state")
        except CheckpointError:
            continue
        if model_header["generation"] == state_header["generation"]:
            found.append(
                (model_header.get("step", -1), weights, model_header, tensors, state_header)
            )
    if not found:
        raise first_error
    step, weights, model_header, tensors, state_header = max(found, key=lambda f: f[0])
    note = f"the last save in {model_path.parent} was interrupted: resuming from step {step}"
    return weights, _user_meta(model_header), tensors, _user_meta(state_header), note
