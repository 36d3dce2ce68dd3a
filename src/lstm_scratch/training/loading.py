"""Rebuilding a model and its vocabulary from a checkpoint."""

from __future__ import annotations

from pathlib import Path

from lstm_scratch.errors import CheckpointError
from lstm_scratch.model import memory
from lstm_scratch.model.charlm import CharLM, ModelConfig
from lstm_scratch.model.data import Vocab
from lstm_scratch.model.tokens import TokenVocab, vocab_from_json
from lstm_scratch.training import checkpoint


def load_model(path: str | Path, backend: str = "auto") -> tuple[CharLM, Vocab | TokenVocab, dict]:
    """A checkpoint folder (or its model.safetensors) -> (model, vocab, metadata)."""
    weights, meta = checkpoint.load_checkpoint(path)
    try:
        config = ModelConfig(**meta["model"])
        vocab = vocab_from_json(meta["vocab"])
        if config.vocab_size != len(vocab):
            raise ValueError(
                f"the vocabulary has {len(vocab)} entries, the model {config.vocab_size}"
            )
        wrong = sorted(name for name, w in weights.items() if w.dtype != config.dtype)
        if wrong:
            raise ValueError(
                f"tensor {wrong[0]!r} is {weights[wrong[0]].dtype}, not {config.dtype}"
            )
        advice = "this checkpoint is for a machine with more memory"
        memory.check_fits(memory.inference_bytes(config, 1, 1), f"the model in {path}", advice)
        model = CharLM(config, backend=backend)
        model.params.load_state_dict(weights)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: the checkpoint does not describe a usable model ({error})"
        ) from None
    return model, vocab, meta
