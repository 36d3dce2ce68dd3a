"""``lstm-scratch show``: one self-contained HTML page of what a model's units do along a text.

The page (``show.html`` beside this file, filled with the data as JSON) needs no server, network
or CDN. Each character is coloured by a chosen unit's value (layer, kind, unit); units are ranked
by how well they track features of the text (``inside.rank_units``); hovering a character shows
the model's five likeliest next characters; selecting a span ranks the units high over it and
low elsewhere (``inside.span_scores``, computed in the page). Values are sent as one byte each,
per unit scaled to its range: around 0 for c, h and the candidates, from its lowest to its
highest for the gates.

Letters for shapes: T characters the model reads, H hidden units, V vocabulary.
"""

from __future__ import annotations

import base64
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np

from lstm_scratch.app import inside
from lstm_scratch.errors import DataError
from lstm_scratch.model.charlm import CharLM
from lstm_scratch.model.data import Vocab
from lstm_scratch.reference import ops

MAX_CHARS = 10_000  # the default cap on the text shown
MAX_PAGE = 256 * 2**20  # the largest data a page may carry
TOP = 5  # next characters shown on hover
DIVERGING = {"c", "h", "g", "n"}  # coloured around 0; the gates from their lowest to highest


def quantized(kind: str, series: np.ndarray) -> tuple[str, list, list]:
    """series (T, H) -> (base64 of uint8 (H, T), unit-major, each unit's low and high)."""
    if kind in DIVERGING:
        high = np.abs(series).max(axis=0)  # (H,)
        low = -high
    else:
        low, high = series.min(axis=0), series.max(axis=0)  # (H,) each
    width = np.where(high > low, high - low, 1.0)
    q = np.rint((series - low) / width * 255).clip(0, 255).astype(np.uint8)  # (T, H)
    q[:, high == low] = 128 if kind in DIVERGING else 0  # a constant unit: white
    text = base64.b64encode(np.ascontiguousarray(q.T).tobytes()).decode("ascii")  # (H, T)
    return text, np.round(low, 5).tolist(), np.round(high, 5).tolist()


def next_characters(logits: np.ndarray, top: int = TOP) -> list:
    """logits (T, V) -> per step the ``top`` likeliest next ids with their probabilities."""
    probs = np.exp(ops.log_softmax(logits.astype(np.float64)))  # (T, V)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :top]  # (T, top)
    chosen = np.take_along_axis(probs, best, axis=1)  # (T, top)
    return [
        [[int(i), round(float(p), 4)] for i, p in zip(row, ps, strict=True)]
        for row, ps in zip(best, chosen, strict=True)
    ]


def page_data(model: CharLM, vocab: Vocab, text: str, about: str) -> dict:
    """What the page shows, as JSON-ready data. Characters outside ``vocab`` are shown but not
    read by the model (position -1)."""
    known = vocab.known(text)  # (N,) bool
    ids = vocab.encode_known(text)[0]  # (T,)
    if ids.size == 0:
        raise DataError("none of the text's characters is in the model's vocabulary")
    values, logits = inside.unit_values(model, ids)
    if not np.isfinite(logits).all() or not all(np.isfinite(v).all() for v in values.values()):
        raise DataError("the model gives non-finite values on this text")
    features = {name: f[known] for name, f in inside.text_features(text).items()}  # (T,) each
    packed = {f"{k},{kind}": quantized(kind, series) for (k, kind), series in values.items()}
    return {
        "steps": int(ids.size),
        "hidden": model.config.hidden_size,
        "layers": model.config.num_layers,
        "kinds": list(inside.KINDS[model.config.cell]),
        "chars": list(text),
        "pos": np.where(known, np.cumsum(known) - 1, -1).tolist(),
        "values": {key: b64 for key, (b64, _, _) in packed.items()},
        "low": {key: low for key, (_, low, _) in packed.items()},
        "high": {key: high for key, (_, _, high) in packed.items()},
        "top": next_characters(logits),
        "vocab": vocab.chars,
        "ranks": inside.rank_units(values, features, top=10),
        "about": about,
    }


def render(data: dict, title: str) -> str:
    """The page: show.html with the data in it (every ``<`` escaped, so that no text closes the
    script element), both placeholders filled in one pass."""
    template = resources.files("lstm_scratch.app").joinpath("show.html").read_text("utf-8")
    try:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise DataError("the model gives non-finite values on this text") from None
    if len(payload) > MAX_PAGE:
        raise DataError(
            f"the page would hold {len(payload) / 2**20:,.0f} MB, more than a browser reads "
            f"well ({MAX_PAGE / 2**20:,.0f} MB): lower --max-chars"
        )
    fills = {
        "TITLE": title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
        "DATA": payload.replace("<", "\\u003c"),
    }
    return re.sub("__(TITLE|DATA)__", lambda found: fills[found[1]], template)


def write_page(model: CharLM, vocab: Vocab, text: str, out: str | Path, about: str = "") -> Path:
    """The page for ``text`` written to ``out``."""
    out = Path(out)
    page = render(page_data(model, vocab, text, about), out.stem)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as err:
        raise DataError(f"could not write {out}: {err.strerror or err}") from None
    return out
