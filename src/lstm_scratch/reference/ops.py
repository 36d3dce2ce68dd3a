"""The pieces around the LSTM, each as a forward/backward pair of pure functions.

Shapes: N rows (N = T*B when a sequence is flattened), T time, B batch, E embedding size,
H features in, V vocabulary (classes). Caches hold activations only, never parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# ---------------------------------------------------------------------------------- nonlinearity


def sigmoid_(z: np.ndarray) -> np.ndarray:
    """In-place logistic sigmoid, computed as σ(z) = ½·tanh(z/2) + ½.

    The identity is exact; the tanh form never overflows (no exp of a large number) and needs no
    branch on the sign of z, so it is stable for any input.
    """
    z *= 0.5
    np.tanh(z, out=z)
    z *= 0.5
    z += 0.5
    return z


def sigmoid(z: np.ndarray) -> np.ndarray:
    return sigmoid_(np.array(z, copy=True))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, stable: shift by the row maximum before exponentiating."""
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (..., V)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------- inputs


def one_hot(ids: np.ndarray, num_classes: int, dtype=np.float32) -> np.ndarray:
    """ids (T, B) integers -> (T, B, V) with a single 1 per row (the notebook's input encoding)."""
    out = np.zeros((*ids.shape, num_classes), dtype=dtype)  # (T, B, V)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


class EmbeddingCache(NamedTuple):
    ids: np.ndarray  # (T, B) the rows that were gathered


def embedding_forward(ids: np.ndarray, weight: np.ndarray):
    """out[t, b] = weight[ids[t, b]]: a row gather, the same as one_hot(ids) @ weight."""
    return weight[ids], EmbeddingCache(ids)  # (T, B, E)


def embedding_backward(dout: np.ndarray, cache: EmbeddingCache, num_embeddings: int) -> np.ndarray:
    """dweight[v] = Σ over positions holding id v of dout (a scatter-add). Returns (V, E)."""
    embed_size = dout.shape[-1]
    dweight = np.zeros((num_embeddings, embed_size), dtype=dout.dtype)  # (V, E)
    np.add.at(dweight, cache.ids.reshape(-1), dout.reshape(-1, embed_size))
    return dweight


# ---------------------------------------------------------------------------------- linear head


class LinearCache(NamedTuple):
    x: np.ndarray  # (..., H)


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray):
    """y = x Wᵀ + b with weight (V, H), bias (V,) as torch.nn.Linear. x (..., H) -> y (..., V).

    Leading axes are flattened first: one (N, H) @ (H, V) GEMM, not one small GEMM per time step.
    """
    num_out, num_in = weight.shape
    y = x.reshape(-1, num_in) @ weight.T  # (N, V)
    y += bias
    return y.reshape(*x.shape[:-1], num_out), LinearCache(x)


def linear_backward(dout: np.ndarray, cache: LinearCache, weight: np.ndarray):
    """Returns dx (..., H), dweight (V, H), dbias (V,)."""
    dweight, dbias = linear_weight_grads(dout, cache)
    return linear_input_grad(dout, weight), dweight, dbias


def linear_weight_grads(dout: np.ndarray, cache: LinearCache):
    """dweight (V, H) = Σ_n dout_nᵀ x_n and dbias (V,) = Σ_n dout_n, over the flattened rows."""
    num_out, num_in = dout.shape[-1], cache.x.shape[-1]
    dout_2d = dout.reshape(-1, num_out)  # (..., V) -> (N, V)
    dweight = dout_2d.T @ cache.x.reshape(-1, num_in)  # (V, N) @ (N, H)
    return dweight, dout_2d.sum(axis=0)  # (V,)


def linear_input_grad(dout: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """dx (..., H) = dout W: one (N, V) @ (V, H) GEMM over the flattened rows."""
    num_out, num_in = weight.shape
    dx = dout.reshape(-1, num_out) @ weight  # (..., V) -> (N, V) @ (V, H)
    return dx.reshape(*dout.shape[:-1], num_in)  # (N, H) -> (..., H)


# ---------------------------------------------------------------------------------- loss


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V) softmax of the logits
    targets: np.ndarray  # (N,)
    scale: float  # 1/N for the mean, 1 for the sum


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, reduction: str = "mean"):
    """Softmax cross-entropy. logits (..., V), targets (...) ints -> scalar loss (logits' dtype).

    loss = Σ_n −log softmax(logits_n)[target_n] = Σ_n log Σ_v exp(s_nv) − s_n,target, with the
    rows shifted by their maximum (s = logits − max) so no exp overflows; divided by N for "mean".
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    num_classes = logits.shape[-1]
    flat_targets = targets.reshape(-1)  # (N,)
    shifted = logits.reshape(-1, num_classes)  # (N, V)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    probs = np.exp(shifted)  # (N, V), normalised two lines down
    sums = probs.sum(axis=1)  # (N,)
    probs /= sums[:, None]
    picked = shifted[np.arange(flat_targets.size), flat_targets]  # (N,)
    scale = 1.0 / flat_targets.size if reduction == "mean" else 1.0
    loss = logits.dtype.type((np.log(sums) - picked).sum() * scale)
    return loss, CrossEntropyCache(probs, flat_targets, scale)


def cross_entropy_backward(cache: CrossEntropyCache, dloss: float = 1.0) -> np.ndarray:
    """dlogits = (softmax − one_hot(target)) · scale · dloss, shape (N, V)."""
    dlogits = cache.probs.copy()  # (N, V)
    dlogits[np.arange(cache.targets.size), cache.targets] -= 1
    dlogits *= cache.scale * dloss
    return dlogits


def cross_entropy(logits: np.ndarray, targets: np.ndarray, reduction: str = "mean"):
    """Forward and backward together, as training needs them: (loss, dlogits (N, V))."""
    loss, cache = cross_entropy_forward(logits, targets, reduction)
    return loss, cross_entropy_backward(cache)


# ---------------------------------------------------------------------------------- dropout


def dropout_mask(rng: np.random.Generator, shape, p: float, dtype) -> np.ndarray:
    """Inverted dropout: each entry is 0 with probability p, else 1/(1-p), so E[mask] = 1."""
    mask = (rng.random(shape) >= p).astype(dtype)
    mask *= np.dtype(dtype).type(1.0 / (1.0 - p))
    return mask
