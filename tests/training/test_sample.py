"""Generation: the next-character distribution (temperature, top-k, top-p), the draw, the step."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_scratch.model.charlm import CharLM, ModelConfig, Stepper
from lstm_scratch.training.sample import draw, next_char_distribution, sample

LOGITS = np.log(np.array([0.1, 0.4, 0.2, 0.3]))  # softmax gives back these probabilities


def test_temperature_one_is_the_softmax():
    assert np.allclose(next_char_distribution(LOGITS), [0.1, 0.4, 0.2, 0.3])


def test_temperature_zero_is_greedy_and_low_temperature_sharpens():
    assert np.array_equal(next_char_distribution(LOGITS, temperature=0), [0, 1, 0, 0])
    sharp = next_char_distribution(LOGITS, temperature=0.5)
    assert sharp[1] > 0.4 and np.isclose(sharp.sum(), 1)


def test_top_k_keeps_the_k_most_likely():
    probs = next_char_distribution(LOGITS, top_k=2)
    assert np.allclose(probs, [0, 0.4 / 0.7, 0, 0.3 / 0.7])
    assert np.allclose(next_char_distribution(LOGITS, top_k=10), [0.1, 0.4, 0.2, 0.3])


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(0.3, [1]), (0.5, [1, 3]), (0.71, [1, 3, 2]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    probs = next_char_distribution(LOGITS, top_p=top_p)
    assert set(np.flatnonzero(probs)) == set(kept)
    assert np.isclose(probs.sum(), 1)
    expected = np.exp(LOGITS[kept])
    assert np.allclose(probs[kept], expected / expected.sum())  # renormalised, order kept


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(
    ("embed_size", "dtype"), [(0, "float32"), (0, "float64"), (4, "float32"), (4, "float64")]
)
def test_stepper_equals_forward_one_step_at_a_time(embed_size, dtype, backend, cell):
    """The model's stepper (the LSTM's ``Stepper``: no cache, buffers kept, one-hot rows from a
    table made once; the GRU's and RNN's ``SequenceStepper``: forward one step at a time on the
    reference's layers) computes what forward computes over the whole sequence, logits and
    state, from any state, on either backend."""
    if backend == "numba":
        pytest.importorskip("numba")
    config = ModelConfig(9, 6, 2, embed_size, dtype=dtype, cell=cell)
    model = CharLM(config, seed=1, backend=backend)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 9, (6, 3))  # (T, B)
    state = tuple(rng.standard_normal((2, 3, 6)).astype(dtype) for _ in range(model.state_size))
    logits, state_n, _ = model.forward(ids, state)  # (T, B, V)
    exact = dtype == "float64"
    tolerance = {"rtol": 1e-12, "atol": 1e-13} if exact else {"rtol": 1e-5, "atol": 1e-6}
    stepper = model.stepper(state)
    assert isinstance(stepper, Stepper) == (cell == "lstm")
    for t in range(6):
        np.testing.assert_allclose(stepper.step(ids[t]), logits[t], **tolerance)
    for ours, expected in zip(stepper.state, state_n, strict=True):
        np.testing.assert_allclose(ours, expected, **tolerance)


def test_draw_follows_the_probabilities():
    probs = np.array([0.0, 0.25, 0.0, 0.75])
    rng = np.random.default_rng(0)
    counts = np.bincount([draw(probs, rng) for _ in range(4000)], minlength=4)
    assert counts[0] == counts[2] == 0
    assert abs(counts[3] / 4000 - 0.75) < 0.03


def plain_distribution(logits, temperature=1.0, top_k=0, top_p=1.0):
    """next_char_distribution written plainly, with the steps it skips as no-ops (the division
    by a temperature of 1, the second shift by a maximum that is already 0): the same bits."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = np.zeros(logits.shape, dtype=np.float64)
    if temperature == 0:
        probs[np.argmax(logits)] = 1.0
        return probs
    with np.errstate(over="ignore"):
        scaled = (logits - logits.max()) / temperature
    if 0 < top_k < scaled.size:
        scaled[scaled < np.sort(scaled)[-top_k]] = -np.inf
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        keep = np.cumsum(probs[order]) - probs[order] < top_p
        probs[order[~keep]] = 0.0
        probs /= probs.sum()
    return probs


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=70),
    st.sampled_from([1.0, 0.0, 0.5, 2.0, 1e-300, 1e-5, 3.7]),
    st.integers(0, 10),
    st.sampled_from([1.0, 0.9, 0.5]),
)
def test_distribution_is_the_plain_formula_bit_for_bit(logits, temperature, top_k, top_p):
    expected = plain_distribution(logits, temperature, top_k, top_p)
    got = next_char_distribution(np.array(logits), temperature, top_k, top_p)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 5, 0.9)])
def test_sample_draws_what_step_by_step_generation_draws(backend, temperature, top_k, top_p):
    """sample() with its stepper gives the ids of the plain loop over model.forward, one
    character at a time (float64: the two agree to rounding far below any draw's margin)."""
    if backend == "numba":
        pytest.importorskip("numba")
    config = ModelConfig(12, hidden_size=8, num_layers=2, dtype="float64")
    model = CharLM(config, seed=2, backend=backend)
    prime, rng = np.array([1, 4, 2]), np.random.default_rng(3)
    logits, state, _ = model.forward(prime.reshape(-1, 1))  # (T, 1, V)
    logits, expected = logits[-1], []  # (1, V)
    for _ in range(40):
        expected.append(draw(next_char_distribution(logits[0], temperature, top_k, top_p), rng))
        logits, state, _ = model.forward(np.array([[expected[-1]]]), state)  # (1, 1, V)
        logits = logits[0]  # (1, V)
    assert sample(model, prime, 40, temperature, top_k, top_p, seed=3) == expected


def test_on_id_returning_true_stops_the_drawing():
    model = CharLM(ModelConfig(vocab_size=7, hidden_size=5, num_layers=1), seed=0)
    seen = []
    out = sample(
        model, np.array([1, 2]), 50, seed=0, on_id=lambda i: seen.append(i) or len(seen) == 3
    )
    assert out == seen and len(out) == 3
    assert sample(model, np.array([1, 2]), 50, seed=0)[:3] == out  # the same draws, then more
