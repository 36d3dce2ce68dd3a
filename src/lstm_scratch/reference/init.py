"""Weight initialisers. Each returns a new array of the requested dtype."""

from __future__ import annotations

import math

import numpy as np


def uniform(rng: np.random.Generator, shape, bound: float, dtype) -> np.ndarray:
    """U(-bound, bound)."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def xavier_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int, dtype) -> np.ndarray:
    """Glorot/Xavier: U(-x, x) with x = sqrt(6 / (fan_in + fan_out)), as the original notebook."""
    return uniform(rng, shape, math.sqrt(6.0 / (fan_in + fan_out)), dtype)


def pytorch_default(rng: np.random.Generator, shape, hidden_size: int, dtype) -> np.ndarray:
    """torch.nn.LSTM's default for every weight and bias: U(-1/sqrt(H), 1/sqrt(H))."""
    return uniform(rng, shape, 1.0 / math.sqrt(hidden_size), dtype)
