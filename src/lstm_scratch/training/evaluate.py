"""Loss, bits per character, perplexity and accuracy of a model on a text (per character, whatever
the tokens)."""

from __future__ import annotations

import math

import numpy as np

from lstm_scratch.errors import ConfigError
from lstm_scratch.model import memory
from lstm_scratch.model.batches import ChunkedText, fit_batch
from lstm_scratch.model.charlm import CharLM
from lstm_scratch.reference import ops


def evaluate(
    model: CharLM,
    ids: np.ndarray,
    batch_size: int = 32,
    seq_len: int = 256,
    chars: np.ndarray | None = None,
) -> dict:
    """Score every prediction in ``ids`` (the state carried across chunks, no dropout).

    The ids are cut into rows as in training, but each row at least 4 windows long so the state
    has context (a short text is one row); fewer than batch_size trailing ids are left out.
    ``chars``: the characters each id stands for (word or bpe tokens; None: one each). Returns
    loss (nats per character: the summed loss over the characters its targets stand for), bpc,
    perplexity (per character), accuracy (argmax, per token), the chars and tokens scored, and
    token_loss (nats per token).
    """
    if batch_size < 1 or seq_len < 1:
        raise ConfigError(
            f"batch size and sequence length must be >= 1, got {batch_size}, {seq_len}"
        )
    batch_size = max(1, min(batch_size, len(ids) // (4 * seq_len)))
    batch_size, seq_len, _ = fit_batch(len(ids), batch_size, seq_len)
    needed = memory.inference_bytes(model.config, batch_size, seq_len)
    advice = "lower --batch-size or --seq-len"
    memory.check_fits(needed, f"scoring {batch_size} x {seq_len} characters", advice)
    text = ChunkedText(ids, batch_size, seq_len)
    counts = None if chars is None else ChunkedText(chars, batch_size, seq_len)  # same cuts
    state = model.zero_state(text.batch_size)
    total_loss, correct, count, covered = 0.0, 0, 0, 0
    for k in range(text.num_chunks):
        inputs, targets = text.chunk(k)
        logits, state, _ = model.forward(inputs, state)  # (T, B, V)
        loss, _ = ops.cross_entropy_forward(logits, targets, reduction="sum")
        total_loss += float(loss)
        correct += int((logits.argmax(axis=-1) == targets).sum())
        count += targets.size
        covered += targets.size if counts is None else int(counts.chunk(k)[1].sum())
    loss = total_loss / covered
    return {
        "loss": loss,
        "bpc": loss / math.log(2),
        "perplexity": math.exp(min(loss, 700.0)),
        "accuracy": correct / count,
        "chars": covered,
        "tokens": count,
        "token_loss": total_loss / count,
    }


def predictions(model: CharLM, ids: np.ndarray, rng: np.random.Generator):
    """Predict each next character of ``ids`` from the true ones before it (teacher forcing).

    Returns (argmax ids, sampled ids): the honest figure, and the one the original notebook
    reported, which draws each prediction from the softmax.
    """
    logits, _, _ = model.forward(ids[:-1].reshape(-1, 1))  # (T, 1, V)
    logp = ops.log_softmax(logits[:, 0].astype(np.float64))  # (T, V)
    probs = np.exp(logp)
    sampled = np.array([rng.choice(p.size, p=p / p.sum()) for p in probs], dtype=np.int64)
    return logits[:, 0].argmax(axis=-1), sampled
