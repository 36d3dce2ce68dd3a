"""What the cells learned: every unit's value along a text, simple features of the text, and the
units that track them (Karpathy, Johnson and Fei-Fei 2015, "Visualizing and Understanding
Recurrent Networks"; LSTMVis's span selection, Strobelt et al. 2018).

Letters for shapes: T characters, H hidden units, V vocabulary. A unit is (layer, kind, index):
kind is the cell state ``c``, the hidden ``h`` or a gate (LSTM ``i f g o``; GRU ``r z n``).
"""

from __future__ import annotations

import numpy as np

from lstm_scratch.model.charlm import CharLM

#: what each cell exposes, in this order
KINDS = {"lstm": ("c", "h", "i", "f", "g", "o"), "gru": ("h", "r", "z", "n"), "rnn": ("h",)}
OPENING, CLOSING = "([{", ")]}"


def unit_values(model: CharLM, ids: np.ndarray) -> tuple[dict, np.ndarray]:
    """Run ``model`` over ids (T,) from a zero state, through the reference layers (whose
    caches keep every step), one sequence at batch 1.

    Returns {(layer, kind): (T, H) values} and the logits (T, V): row t predicts character t+1.
    """
    ids = np.asarray(ids).reshape(-1, 1)  # (T,) -> (T, 1)
    logits, _, cache = model.on_reference().forward(ids)  # (T, 1, V)
    values = {}
    for k, layer in enumerate(cache.recurrent.layers):
        layer = layer if model.config.cell == "lstm" else layer[0]  # one direction
        for kind, series in _kinds(model.config.cell, layer).items():
            values[(k, kind)] = np.ascontiguousarray(series[:, 0])  # (T, 1, H) -> (T, H)
    return values, logits[:, 0]


def _kinds(cell: str, cache) -> dict[str, np.ndarray]:
    """A layer's cache as {kind: (T, 1, H)}."""
    kinds = {"h": cache.hs[1:]}  # h_1 … h_T
    if cell == "lstm":
        kinds["c"] = cache.cs[1:]
    gates = [kind for kind in KINDS[cell] if kind not in ("c", "h")]  # i f g o, or r z n
    if gates:  # (T, 1, G·H) -> G of (T, 1, H)
        kinds.update(zip(gates, np.split(cache.gates, len(gates), axis=-1), strict=True))
    return {kind: kinds[kind] for kind in KINDS[cell]}


def text_features(text: str) -> dict[str, np.ndarray]:
    """Simple features a unit may track, one value per character (T,), float64:
    inside double quotes, inside brackets ( [ { (the depth), position in the line, the start of
    a word, and the line's indentation (for code)."""
    quote = depth = column = indent = 0
    at_line_start, previous = True, "\n"
    rows = []
    for char in text:
        if char == '"':
            quote ^= 1
        if char in OPENING:
            depth += 1
        elif char in CLOSING:
            depth = max(depth - 1, 0)
        at_line_start = at_line_start and char == " "
        indent += at_line_start
        word_start = char.isalpha() and not previous.isalpha()
        rows.append((quote, depth, column, word_start, indent))
        column += 1
        if char == "\n":
            column = indent = 0
            at_line_start = True
        previous = char
    names = ("inside quotes", "inside brackets", "position in line", "word start", "indentation")
    table = np.array(rows, dtype=np.float64).reshape(-1, len(names))  # (T, features)
    return {name: table[:, j] for j, name in enumerate(names)}


def correlations(values: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson's r of each unit's series with ``feature``: values (T, H), feature (T,) -> (H,);
    0 where either is constant."""
    x = values - values.mean(axis=0)  # (T, H)
    y = feature - feature.mean()  # (T,)
    scale = np.sqrt((x * x).sum(axis=0) * (y @ y))  # (H,)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (y @ x) / scale
    return np.where(scale > 0, r, 0.0)


def rank_units(values: dict, features: dict, top: int = 10) -> dict[str, list[tuple]]:
    """Per feature, the ``top`` units by |r|: [(r, layer, kind, unit), …], strongest first;
    none for a feature that is constant over the text (no quotes in it, say)."""
    ranking = {}
    for name, feature in features.items():
        found = []
        if feature.min() == feature.max():
            ranking[name] = found
            continue
        for (layer, kind), series in values.items():
            r = correlations(series, feature)  # (H,): 0 for a constant unit, left out
            found += [(float(r[j]), layer, kind, int(j)) for j in np.flatnonzero(r)]
        ranking[name] = sorted(found, key=lambda item: -abs(item[0]))[:top]
    return ranking


def span_scores(series: np.ndarray, start: int, stop: int) -> np.ndarray:
    """LSTMVis's selection: how much each unit is higher over characters start..stop-1 than
    elsewhere, in units of its spread: (mean inside − mean outside) / std. series (T, H) -> (H,);
    zeros when the span is empty or the whole text."""
    inside = np.zeros(series.shape[0], dtype=bool)
    inside[start:stop] = True
    if inside.all() or not inside.any():
        return np.zeros(series.shape[1])
    spread = series.std(axis=0)  # (H,)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = (series[inside].mean(axis=0) - series[~inside].mean(axis=0)) / spread
    return np.where(spread > 0, score, 0.0)
