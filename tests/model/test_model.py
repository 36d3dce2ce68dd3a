"""The whole character model (input -> LSTM, GRU or RNN stack -> head -> loss) against central
differences, and against torch.nn with the weights copied in."""

import re

import numpy as np
import pytest

from conftest import numeric_gradient, rel_error
from lstm_scratch.model.charlm import CharLM, ModelConfig


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("embed_size", [0, 4])  # one-hot input, and an embedding
def test_model_gradients_match_central_differences(embed_size, backend, cell):
    config = ModelConfig(
        vocab_size=7,
        hidden_size=5,
        num_layers=2,
        embed_size=embed_size,
        dropout=0.3,
        dtype="float64",
        cell=cell,
    )
    model = CharLM(config, seed=1, backend=backend)
    rng = np.random.default_rng(0)
    model.params.flat[:] = rng.normal(0, 0.7, model.params.flat.size)
    ids, targets = rng.integers(0, 7, (6, 3)), rng.integers(0, 7, (6, 3))
    state = (rng.normal(size=(2, 3, 5)), rng.normal(0, 2, size=(2, 3, 5)))[: model.state_size]

    def loss():  # the same dropout masks on every call
        return model.loss_and_grads(ids, targets, state, rng=np.random.default_rng(5))[0]

    _, grads, _ = model.loss_and_grads(ids, targets, state, rng=np.random.default_rng(5))
    assert rel_error(grads.flat, numeric_gradient(loss, model.params.flat)) < 1e-6
    assert set(grads.arrays) == set(model.params.arrays)


PATHS = {  # (cell, backend, large_steps); the small/large switch patched below is the LSTM's
    f"{cell} {name}": (cell, backend, large)
    for cell in ("lstm", "gru", "rnn")
    for name, backend, large in [
        ("numpy", "numpy", False),
        ("numba small steps", "numba", False),
        ("numba lanes", "numba", True),
    ]
    if cell == "lstm" or not large
}


@pytest.mark.parametrize(("cell", "backend", "large_steps"), PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize("embed_size", [0, 4])
def test_every_gradient_entry_is_written(embed_size, backend, large_steps, cell, monkeypatch):
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
        cell=cell,
    )
    model = CharLM(config, seed=1, backend=backend)
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 7, (5, 4)), rng.integers(0, 7, (5, 4))
    _, grads, _ = model.loss_and_grads(ids, targets, rng=np.random.default_rng(1))
    assert np.isfinite(grads.flat).all()


TORCH_CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def torch_charlm(params, cell, ids, state, masks, top_mask):
    """CharLM in torch, one single-layer torch.nn module per layer with our weights, so that the
    dropout masks go between layers as CharLM puts them. Returns logits (T, B, V), the final
    state per layer and the parameters under CharLM's names."""
    import torch
    import torch.nn.functional as F

    weights = {k: torch.tensor(v, requires_grad=True) for k, v in params.state_dict().items()}
    x = torch.from_numpy(ids)
    if "embedding.weight" in weights:
        x = F.embedding(x, weights["embedding.weight"])  # (T, B, E)
    else:
        x = F.one_hot(x, weights["decoder.weight"].shape[0]).double()  # (T, B, V)
    finals = []
    for k in range(state[0].shape[0]):
        if masks[k] is not None:
            x = x * torch.from_numpy(masks[k])
        layer = getattr(torch.nn, TORCH_CELLS[cell])(x.shape[-1], state[0].shape[-1]).double()
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        layer_weights = {f"{n}_l0": weights[f"{cell}.{n}_l{k}"] for n in names}
        start = tuple(torch.from_numpy(s[k : k + 1]) for s in state)
        start = start if cell == "lstm" else start[0]
        x, last = torch.func.functional_call(layer, layer_weights, (x, start))  # (T, B, H)
        finals.append(last if cell == "lstm" else (last,))
    if top_mask is not None:
        x = x * torch.from_numpy(top_mask)
    logits = F.linear(x, weights["decoder.weight"], weights["decoder.bias"])  # (T, B, V)
    return logits, finals, weights


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("embed_size", "dropout"), [(0, 0.0), (4, 0.0), (4, 0.4)])
def test_loss_gradients_and_state_equal_torch_s(embed_size, dropout, cell, backend):
    """Our CharLM against the same model in torch with our weights and dropout masks, from a
    random state: the loss, every gradient and the final state, float64."""
    import torch
    import torch.nn.functional as F

    from lstm_scratch.model.recurrent import layer_dropout_masks
    from lstm_scratch.reference.ops import dropout_mask

    V, H, L, T, B = 7, 6, 2, 5, 3
    config = ModelConfig(V, H, L, embed_size, dropout, dtype="float64", cell=cell)
    model = CharLM(config, backend=backend)
    rng = np.random.default_rng(2)
    model.params.flat[:] = rng.normal(0, 0.6, model.params.flat.size)  # biases non-zero
    ids, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    state = tuple(rng.normal(0, 1.5, (L, B, H)) for _ in range(model.state_size))
    loss, grads, state_n = model.loss_and_grads(ids, targets, state, rng=np.random.default_rng(9))

    masks, top_mask = [None] * L, None
    if dropout:  # the masks CharLM draws, in its order
        draw = np.random.default_rng(9)
        masks = layer_dropout_masks(draw, L, (T, B, H), dropout, np.float64)
        top_mask = dropout_mask(draw, (T, B, H), dropout, np.float64)
        assert (masks[1] == 0).any() and (top_mask == 0).any()
    logits, finals, weights = torch_charlm(model.params, cell, ids, state, masks, top_mask)
    expected = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    for part, ours in enumerate(state_n):  # h (and c): (L, B, H)
        theirs = torch.cat([final[part] for final in finals]).detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    for name, weight in weights.items():
        np.testing.assert_allclose(grads[name], weight.grad.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("cell", "state", "expected"),
    [
        ("gru", np.zeros((2, 3, 5)), "a tuple (h,) of (2, 3, 5)"),  # the public GRU's form
        ("lstm", (np.zeros((2, 3, 5)),), "a tuple (h, c) of (2, 3, 5)"),
        ("rnn", (np.zeros((2, 4, 5)),), "a tuple (h,) of (2, 3, 5) (L, B, H)"),
    ],
)
def test_a_state_of_the_wrong_form_is_a_value_error(cell, state, expected):
    model = CharLM(ModelConfig(7, 5, 2, dtype="float64", cell=cell))
    with pytest.raises(ValueError, match=re.escape(expected)):
        model.forward(np.zeros((4, 3), dtype=np.int64), state)
