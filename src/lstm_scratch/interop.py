"""Weights to and from PyTorch: a safetensors file with torch's module names.

The names are those of ``torch.nn.Embedding`` (``embedding.weight``, absent for one-hot input),
``torch.nn.LSTM`` (``lstm.weight_ih_l0``, ``lstm.weight_hh_l0``, ``lstm.bias_ih_l0``, …) and
``torch.nn.Linear`` (``decoder.weight``, ``decoder.bias``) — the names CharLM already uses, so an
export is the weights with the model's config and vocabulary as JSON in the file's metadata, and an
import infers the sizes from the shapes. No pickle either way.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from . import checkpoint
from .data import Vocab
from .errors import CheckpointError, DataError
from .loading import load_model
from .model import CharLM, ModelConfig

EXPORT_FORMAT = "lstm-scratch-torch-export"


def export_torch(checkpoint_path: str | Path, out: str | Path) -> Path:
    """Write the weights of a checkpoint (folder or model file) to ``out`` with torch's names."""
    model, vocab, _ = load_model(checkpoint_path)
    metadata = {
        "format": EXPORT_FORMAT,
        "model": json.dumps(dataclasses.asdict(model.config)),
        "vocab": json.dumps(vocab.to_json()),
    }
    tensors = {name: np.ascontiguousarray(w) for name, w in model.params.state_dict().items()}
    out = Path(out)
    try:
        save_file(tensors, str(out), metadata=metadata)
    except OSError as err:
        raise CheckpointError(f"could not write {out}: {err.strerror or err}") from None
    return out


def infer_config(shapes: dict[str, tuple], dtype: str) -> ModelConfig:
    """The ModelConfig that torch-named tensors of these shapes belong to."""
    try:
        vocab_size, hidden = shapes["decoder.weight"]
        layers = 1 + max(
            int(m.group(1)) for n in shapes if (m := re.fullmatch(r"lstm\.weight_ih_l(\d+)", n))
        )
    except (KeyError, ValueError):
        raise CheckpointError(
            "not a character model in torch's names: needs decoder.weight and lstm.weight_ih_l0"
        ) from None
    embed = shapes["embedding.weight"][1] if "embedding.weight" in shapes else 0
    return ModelConfig(vocab_size, hidden, layers, embed, dtype=dtype)


def import_torch(path: str | Path, out: str | Path, vocab_text: str | None = None) -> Path:
    """Read a torch-named safetensors file into a checkpoint folder ``out`` (model only).

    The vocabulary comes from the file's metadata (as written by ``export_torch``), or else from
    ``vocab_text``: the characters of the training text, in the order lstm-scratch sorts them.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, SafetensorError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot load {path}: not a safetensors file ({reason})") from None
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
        raise CheckpointError(f"{path}: tensors must all be float32 or all float64")
    config = infer_config({n: t.shape for n, t in tensors.items()}, str(dtypes.pop()))
    if "vocab" in metadata:
        vocab = Vocab.from_json(json.loads(metadata["vocab"]))
    elif vocab_text is not None:
        vocab = Vocab.from_text(vocab_text)
    else:
        raise DataError(f"{path} holds no vocabulary: give the training text (--vocab-from FILE)")
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"the vocabulary has {len(vocab)} characters, the weights {config.vocab_size}"
        )
    model = CharLM(config)
    expected = set(model.params.state_dict())
    if set(tensors) != expected:
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise CheckpointError(f"{path}: unexpected {extra} / missing {missing} tensors")
    try:
        model.params.load_state_dict(tensors)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    meta = {"model": dataclasses.asdict(config), "vocab": vocab.to_json(), "step": 0,
            "metrics": {}, "imported_from": str(path)}  # fmt: skip
    checkpoint.save_checkpoint(out, model.params.state_dict(), meta)
    return Path(out)
