"""Loss curves of a run: train and validation loss against step and against wall time.

Reads the run folder's ``metrics.jsonl`` (one line per evaluation) and writes ``loss.png`` beside
it with matplotlib's Agg canvas: no display, no pyplot state. matplotlib is optional
(``pip install "lstm-scratch[plot]"``); without it ``plot_run`` raises a one-line error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lstm_scratch.errors import ConfigError, DataError


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The evaluations in ``run_dir/metrics.jsonl``, in order; an unreadable line is an error."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file (is {run_dir} a run folder?)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            float(row["step"]), float(row["val_loss"]), float(row["elapsed"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}, line {number}: not an evaluation record") from None
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no evaluations yet")
    # a resumed run may log a step again (after a kill, from its last checkpoint): the last wins
    return sorted({row["step"]: row for row in rows}.values(), key=lambda row: row["step"])


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the loss curves of ``run_dir`` to ``out`` (default ``run_dir/loss.png``)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError('plotting needs matplotlib: pip install "lstm-scratch[plot]"') from None
    rows = read_metrics(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "loss.png"
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, key, label in ((axes[0], "step", "step"), (axes[1], "elapsed", "wall time (minutes)")):
        scale = 1 / 60 if key == "elapsed" else 1
        x = [row[key] * scale for row in rows]
        train = [math.nan if row.get("train_loss") is None else row["train_loss"] for row in rows]
        ax.plot(x, train, "o-", ms=3, label="train (last batch)")
        ax.plot(x, [row["val_loss"] for row in rows], "s-", ms=3, label="validation")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        bits = ax.secondary_yaxis("right", functions=(_to_bits, _to_nats))
        bits.set_ylabel("bits / char")
    axes[0].set_ylabel("loss (nats / char)")
    axes[0].legend()
    best = min(rows, key=lambda row: row["val_loss"])
    figure.suptitle(
        f"{Path(run_dir).name}: best validation loss {best['val_loss']:.4f} nats/char "
        f"({best['val_loss'] / math.log(2):.4f} bits/char) at step {best['step']}"
    )
    figure.savefig(out, dpi=110)
    return out


def _to_bits(nats):
    return nats / math.log(2)


def _to_nats(bits):
    return bits * math.log(2)
