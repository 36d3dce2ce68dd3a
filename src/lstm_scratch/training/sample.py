"""Generating text from a model, one character at a time."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from lstm_scratch.errors import ConfigError
from lstm_scratch.fast import host
from lstm_scratch.model.charlm import CharLM


def next_char_distribution(logits, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
    """logits (V,) -> probabilities (V,) in float64 after temperature, top-k and top-p (nucleus).

    temperature 0 puts all the mass on the argmax (greedy decoding).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        probs = np.zeros(logits.shape, dtype=np.float64)  # (V,)
        probs[np.argmax(logits)] = 1.0
        return probs
    scaled = logits - logits.max()  # (V,) shifted: the maximum is 0, and stays 0 below
    if temperature != 1:  # (a division by 1 would change no bit: skipped, as it runs per char)
        with np.errstate(over="ignore"):  # a tiny temperature sends all but the top to -inf
            scaled /= temperature
    if 0 < top_k < scaled.size:
        scaled[scaled < np.sort(scaled)[-top_k]] = -np.inf
    probs = np.exp(scaled)
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        keep = np.cumsum(probs[order]) - probs[order] < top_p  # the smallest set reaching top_p
        probs[order[~keep]] = 0.0
        probs /= probs.sum()
    return probs


def validate_sampling(length=1, temperature=1.0, top_k=0, top_p=1.0) -> None:
    if length < 0:
        raise ConfigError(f"--length must be >= 0, got {length}")
    if not 0 <= temperature < math.inf:
        raise ConfigError(f"--temperature must be >= 0 and finite, got {temperature}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")


def sample(
    model: CharLM,
    prime_ids: np.ndarray,
    length: int,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    seed=None,
    on_id: Callable[[int], object] | None = None,
    never: int | None = None,
) -> list[int]:
    """Feed ``prime_ids`` (at least one), then draw ``length`` ids, calling ``on_id`` on each;
    ``on_id`` returning True stops the drawing there (``sample`` of a token model stops at a
    length in characters). ``never``: an id never drawn (a token model's [UNK])."""
    validate_sampling(length, temperature, top_k, top_p)
    rng = np.random.default_rng(seed)
    threads = host.generation_blas_threads(model.params.flat.nbytes)
    with threadpool_limits(threads, user_api="blas"):
        logits, state, _ = model.forward(np.asarray(prime_ids).reshape(-1, 1))  # (T, 1, V)
        logits = logits[-1]  # (1, V)
        stepper, ids = model.stepper(state), np.zeros(1, dtype=np.intp)  # (1,)
        out = []
        for _ in range(length):
            row = logits[0]  # (V,)
            if never is not None:
                row = row.copy()
                row[never] = -np.inf
            probs = next_char_distribution(row, temperature, top_k, top_p)
            next_id = draw(probs, rng)
            out.append(next_id)
            if on_id is not None and on_id(next_id) is True:
                break
            ids[0] = next_id
            logits = stepper.step(ids)  # (1, V)
    return out


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn with probabilities ``probs`` (V,), by inverting the cumulative sum."""
    cumulative = np.cumsum(probs)  # (V,)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, probs.size - 1)
