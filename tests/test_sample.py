"""Generation: the next-character distribution (temperature, top-k, top-p), the draw, the step."""

import numpy as np
import pytest

from lstm_scratch.model import CharLM, ModelConfig
from lstm_scratch.sample import draw, next_char_distribution

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


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("embed_size", [0, 4])
def test_step_equals_forward_one_step_at_a_time(embed_size, backend):
    """model.step (no cache, used for generation) computes what forward computes, on either
    backend (numba's step does its gate arithmetic in one compiled call)."""
    if backend == "numba":
        pytest.importorskip("numba")
    config = ModelConfig(9, hidden_size=6, num_layers=2, embed_size=embed_size, dtype="float64")
    model = CharLM(config, seed=1, backend=backend)
    ids = np.random.default_rng(0).integers(0, 9, (5, 3))  # (T, B)
    logits, _, _ = model.forward(ids)
    state = model.zero_state(3)
    for t in range(5):
        step_logits, state = model.step(ids[t], state)
        assert np.abs(step_logits - logits[t]).max() < 1e-13


def test_draw_follows_the_probabilities():
    probs = np.array([0.0, 0.25, 0.0, 0.75])
    rng = np.random.default_rng(0)
    counts = np.bincount([draw(probs, rng) for _ in range(4000)], minlength=4)
    assert counts[0] == counts[2] == 0
    assert abs(counts[3] / 4000 - 0.75) < 0.03
