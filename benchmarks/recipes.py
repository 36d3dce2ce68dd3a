"""The table and the picture of docs/shakespeare.md, from the runs' metrics.jsonl.

    python benchmarks/recipes.py NAME=RUN_DIR ... [--plot OUT.png]

One markdown row a run: the validation loss (nats/char) at the last evaluation by 5 and by 10
minutes of elapsed time, at the run's last evaluation (its end: 15 minutes, or earlier when its
steps ran out), the best and when, and the mean training speed. ``--plot`` draws validation loss
against wall time for every run named.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def evaluations(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def by(lines: list[dict], seconds: float) -> str:
    """The last validation loss evaluated by ``seconds`` of elapsed time."""
    done = [m for m in lines if m["elapsed"] <= seconds]
    return f"{done[-1]['val_loss']:.3f}" if done else "–"


def row(name: str, lines: list[dict]) -> str:
    best = min(lines, key=lambda m: m["val_loss"])
    last = lines[-1]
    speed = sum(m["chars_per_s"] for m in lines) / len(lines)
    end = f"{last['val_loss']:.3f}" + (
        f" ({last['elapsed'] / 60:.1f} min)" if last["elapsed"] < 14.5 * 60 else ""
    )
    cells = [name, by(lines, 300), by(lines, 600), end]
    cells += [f"{best['val_loss']:.3f} at {best['elapsed'] / 60:.1f} min", f"{speed:,.0f}"]
    return "| " + " | ".join(cells) + " |"


def plot(runs: dict[str, list[dict]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, lines in runs.items():
        minutes = [m["elapsed"] / 60 for m in lines]
        ax.plot(minutes, [m["val_loss"] for m in lines], marker=".", label=name)
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("held-out loss (nats/char)")
    ax.set_ylim(top=2.0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    parser.add_argument("--plot", metavar="OUT.png")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        name, _, folder = item.rpartition("=")
        runs[name or folder] = evaluations(Path(folder))
    print("| recipe | 5 min | 10 min | end | best | chars/s |")
    print("|---|---|---|---|---|---|")
    for name, lines in runs.items():
        print(row(name, lines) if lines else f"| {name} | no evaluation yet |")
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
