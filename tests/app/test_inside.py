"""What the cells learned: unit values against torch stepped by hand, text features written out,
and rankings that find planted units."""

import numpy as np
import pytest
import torch

from lstm_scratch.app import inside
from lstm_scratch.model.charlm import CharLM, ModelConfig


def test_text_features_by_hand():
    text = 'He said "hi (there)" and\n  left.\n'
    f = inside.text_features(text)
    assert f["inside quotes"].tolist() == [0] * 8 + [1] * 11 + [0] * 14
    assert f["inside brackets"].tolist() == [0] * 12 + [1] * 6 + [0] * 15
    assert f["position in line"].tolist() == list(range(25)) + list(range(8))
    starts = [i for i, v in enumerate(f["word start"]) if v]
    assert [text[i : i + 2] for i in starts] == ["He", "sa", "hi", "th", "an", "le"]
    assert f["indentation"].tolist() == [0] * 25 + [1] + [2] * 7


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_lstm_unit_values_equal_torch_stepped_by_hand(backend):
    """h, c and the four gates of both layers, every step, against torch.nn.LSTM's weights
    stepped one character at a time, the gates written out from torch's equations."""
    model = CharLM(ModelConfig(11, 6, 2, 4, dtype="float64"), seed=1, backend=backend)
    rng = np.random.default_rng(0)
    model.params.flat[:] = rng.normal(0, 0.8, model.params.flat.size)
    ids = rng.integers(0, 11, 20)
    values, logits = inside.unit_values(model, ids)
    w = {k: torch.from_numpy(v.copy()) for k, v in model.params.state_dict().items()}
    x = w["embedding.weight"][torch.from_numpy(ids)]  # (T, E)
    for k in range(2):
        h, c, rows = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64), []
        for t in range(len(ids)):
            z = w[f"lstm.weight_ih_l{k}"] @ x[t] + w[f"lstm.bias_ih_l{k}"]
            z = z + w[f"lstm.weight_hh_l{k}"] @ h + w[f"lstm.bias_hh_l{k}"]
            i, f, g, o = z.chunk(4)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            rows.append({"c": c, "h": h, "i": i, "f": f, "g": g, "o": o})
        for kind in inside.KINDS["lstm"]:
            expected = torch.stack([row[kind] for row in rows]).numpy()  # (T, H)
            np.testing.assert_allclose(values[(k, kind)], expected, atol=1e-12, err_msg=kind)
        x = torch.stack([row["h"] for row in rows])  # the next layer's input
    expected_logits = x @ w["decoder.weight"].T + w["decoder.bias"]
    np.testing.assert_allclose(logits, expected_logits.numpy(), atol=1e-12)


def test_gru_unit_values_equal_torch_s_equations_written_out():
    """h and the gates r, z, n of a one-layer GRU, every step, from torch.nn.GRU's equations."""
    model = CharLM(ModelConfig(7, 5, 1, 0, dtype="float64", cell="gru"), seed=3)
    rng = np.random.default_rng(2)
    model.params.flat[:] = rng.normal(0, 0.8, model.params.flat.size)
    ids = rng.integers(0, 7, 12)
    values, _ = inside.unit_values(model, ids)
    w = {k: torch.from_numpy(v.copy()) for k, v in model.params.state_dict().items()}
    h, rows = torch.zeros(5, dtype=torch.float64), []
    for t in ids:
        x_part = w["gru.weight_ih_l0"][:, t] + w["gru.bias_ih_l0"]  # one-hot input: a column
        h_part = w["gru.weight_hh_l0"] @ h + w["gru.bias_hh_l0"]
        (xr, xz, xn), (hr, hz, hn) = x_part.chunk(3), h_part.chunk(3)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        rows.append({"h": h, "r": r, "z": z, "n": n})
    for kind in inside.KINDS["gru"]:
        expected = torch.stack([row[kind] for row in rows]).numpy()  # (T, H)
        np.testing.assert_allclose(values[(0, kind)], expected, atol=1e-12, err_msg=kind)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_gru_and_rnn_hidden_values_equal_torch(cell):
    model = CharLM(ModelConfig(9, 5, 2, 0, dtype="float64", cell=cell), seed=2)
    ids = np.random.default_rng(1).integers(0, 9, 15)
    values, _ = inside.unit_values(model, ids)
    assert {kind for _, kind in values} == set(inside.KINDS[cell])
    layers = {"gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](9, 5, 2).double()
    prefix = f"{cell}."
    state = {
        k.removeprefix(prefix): torch.from_numpy(v.copy())
        for k, v in model.params.state_dict().items()
        if k.startswith(prefix)
    }
    layers.load_state_dict(state)
    y, _ = layers(torch.nn.functional.one_hot(torch.from_numpy(ids), 9).double()[:, None])
    np.testing.assert_allclose(values[(1, "h")], y[:, 0].detach().numpy(), atol=1e-12)


def test_correlations_are_pearson_s():
    rng = np.random.default_rng(3)
    values, feature = rng.normal(size=(50, 4)), rng.normal(size=50)
    values[:, 2] = 1.0  # constant: 0, not NaN
    r = inside.correlations(values, feature)
    for j in (0, 1, 3):
        assert r[j] == pytest.approx(np.corrcoef(values[:, j], feature)[0, 1], abs=1e-12)
    assert r[2] == 0.0


def test_rankings_find_planted_units():
    rng = np.random.default_rng(4)
    text = ('say "yes" (or no)\n' * 20)[:300]
    features = inside.text_features(text)
    values = {(k, kind): rng.normal(size=(300, 8)) for k in range(2) for kind in ("c", "h")}
    values[(1, "c")][:, 5] = features["inside quotes"] + rng.normal(0, 0.05, 300)
    values[(0, "h")][:, 2] = -features["position in line"] + rng.normal(0, 0.5, 300)
    features["never"] = np.zeros(300)
    ranking = inside.rank_units(values, features, top=3)
    assert ranking["never"] == []
    r, *unit = ranking["inside quotes"][0]
    assert unit == [1, "c", 5] and r > 0.95
    r, *unit = ranking["position in line"][0]
    assert unit == [0, "h", 2] and r < -0.9
    strengths = [abs(item[0]) for item in ranking["word start"]]
    assert strengths == sorted(strengths, reverse=True)
    series = values[(1, "c")]
    start = text.index('"')
    scores = inside.span_scores(series, start, text.index('"', start + 1) + 1)
    assert np.argmax(scores) == 5
