"""The whole character model (input -> LSTM stack -> head -> loss) against central differences."""

import numpy as np
import pytest

from conftest import numeric_gradient, rel_error
from lstm_scratch.model.charlm import CharLM, ModelConfig


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("embed_size", [0, 4])  # one-hot input, and an embedding
def test_model_gradients_match_central_differences(embed_size, backend):
    config = ModelConfig(
        vocab_size=7,
        hidden_size=5,
        num_layers=2,
        embed_size=embed_size,
        dropout=0.3,
        dtype="float64",
    )
    model = CharLM(config, seed=1, backend=backend)
    rng = np.random.default_rng(0)
    model.params.flat[:] = rng.normal(0, 0.7, model.params.flat.size)
    ids, targets = rng.integers(0, 7, (6, 3)), rng.integers(0, 7, (6, 3))
    state = (rng.normal(size=(2, 3, 5)), rng.normal(0, 2, size=(2, 3, 5)))

    def loss():  # the same dropout masks on every call
        return model.loss_and_grads(ids, targets, state, rng=np.random.default_rng(5))[0]

    _, grads, _ = model.loss_and_grads(ids, targets, state, rng=np.random.default_rng(5))
    assert rel_error(grads.flat, numeric_gradient(loss, model.params.flat)) < 1e-6
    assert set(grads.arrays) == set(model.params.arrays)


@pytest.mark.parametrize(
    ("backend", "large_steps"),
    [("numpy", False), ("numba", False), ("numba", True)],
    ids=["numpy", "numba small steps", "numba lanes"],
)
@pytest.mark.parametrize("embed_size", [0, 4])
def test_every_gradient_entry_is_written(embed_size, backend, large_steps, monkeypatch):
    """loss_and_grads takes its gradient buffer unfilled (``FlatParams.empty_like``): filled
    with NaN here instead, no NaN may be left in what it returns."""
    from lstm_scratch.fast import layer as fast_layer
    from lstm_scratch.reference.params import FlatParams

    def nan_filled(self):
        grads = FlatParams(self.shapes, self.dtype, zeros=False)
        grads.flat[:] = np.nan
        return grads

    monkeypatch.setattr(FlatParams, "empty_like", nan_filled)
    monkeypatch.setattr(fast_layer, "is_small_step", lambda batch, hidden: not large_steps)
    config = ModelConfig(
        vocab_size=7,
        hidden_size=20,
        num_layers=2,
        embed_size=embed_size,
        dropout=0.2,
        dtype="float32",
    )
    model = CharLM(config, seed=1, backend=backend)
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 7, (5, 4)), rng.integers(0, 7, (5, 4))
    _, grads, _ = model.loss_and_grads(ids, targets, rng=np.random.default_rng(1))
    assert np.isfinite(grads.flat).all()
