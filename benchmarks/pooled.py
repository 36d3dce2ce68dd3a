"""Pool the round-by-round ratios of several ``lstm-scratch bench --json`` files: how sure the
runs together make a target when single runs land on both sides of it.

    python benchmarks/pooled.py run1.json run2.json … [--config d]

Each round of a bench run compares processes run one after another, so a round's ratio
(``round_ratios`` in the JSON) is the unit pooled here. Per configuration found in the files
(training a, b, c, d or a custom one; "sample"; "notebook"; "engine d dense, numpy first" and
the like from ``bench --engine``): each file's ratio of medians and round-by-round median, then
over all rounds the median, a bootstrap 95 % interval for that median (10,000 resamples,
seeded, so the same files print the same figures), and how many rounds reach the target
(``TARGETS``, ``ENGINE_TARGETS``). Pool only files of the same code: which ones is the caller's
call.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lstm_scratch.bench.harness import round_ratios

TARGETS = {"a": 3.0, "b": 1.1, "c": 1.0, "d": 1.4, "sample": 3.0}  # the char model against torch
ENGINE_TARGETS = {"a": 3.0, "b": 1.1, "c": 1.0, "d": 1.2}  # the LSTM alone, either import order


def target(name: str) -> float | None:
    """The ratio a configuration aims at: "d" or "engine d dense, numpy first"."""
    if name.startswith("engine "):
        return ENGINE_TARGETS.get(name.split()[1])
    return TARGETS.get(name)


RESAMPLES = 10_000


def entries(report: dict):
    """(name, ratio, round ratios) of each configuration in one bench report. Reports from
    before the bench wrote ``round_ratios`` get them from their runs, as the bench makes them."""
    found = list(report.get("train", {}).items())
    found += [(name, report[name]) for name in ("sample", "notebook") if report.get(name)]
    found += [(f"engine {name}", entry) for name, entry in report.get("engine", {}).items()]
    for name, entry in found:
        if not isinstance(entry, dict) or not isinstance(entry.get("results", {}), dict):
            raise ValueError(f"{name}: not a bench entry")
        rounds = entry.get("round_ratios")
        results = entry.get("results", {})
        runs = [result.get("runs", []) for result in results.values()]
        if not rounds and "scratch" in results and len({len(r) for r in runs}) == 1:
            rounds = round_ratios(results)
        yield name, entry.get("ratio"), rounds or []


def median_interval(values, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """A bootstrap 95 % interval for the median of ``values``."""
    values = np.asarray(values, dtype=np.float64)  # (N,)
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(resamples, values.size))  # (resamples, N)
    low, high = np.percentile(np.median(draws, axis=1), [2.5, 97.5])
    return float(low), float(high)


def pool(paths, only: str | None = None) -> dict:
    """{configuration: {"files": [(path, ratio, round median)], "rounds": [...]}}."""
    pooled: dict = {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        if not isinstance(report, dict) or not isinstance(report.get("train", {}), dict):
            raise ValueError(f"{path}: not a lstm-scratch bench --json report")
        for name, ratio, rounds in entries(report):
            if (only and name != only) or not rounds:
                continue
            entry = pooled.setdefault(name, {"files": [], "rounds": []})
            entry["files"].append((str(path), ratio, float(np.median(rounds))))
            entry["rounds"].extend(rounds)
    return pooled


def format_pooled(pooled: dict) -> str:
    lines = []
    for name, entry in pooled.items():
        rounds = np.asarray(entry["rounds"], dtype=np.float64)  # (N,)
        low, high = median_interval(rounds)
        line = (
            f"{name}: {rounds.size} rounds from {len(entry['files'])} runs, median "
            f"{np.median(rounds):.3f}x (95 % {low:.3f}-{high:.3f})"
        )
        goal = target(name)
        if goal is not None:
            line += f"; {int((rounds >= goal).sum())} of {rounds.size} rounds >= {goal}x"
            runs = sum(ratio is not None and ratio >= goal for _, ratio, _ in entry["files"])
            line += f", {runs} of {len(entry['files'])} runs"
        lines.append(line)
        for path, ratio, median in entry["files"]:
            shown = "-" if ratio is None else f"{ratio:.2f}x"
            lines.append(f"    {Path(path).name}: {shown}, round by round {median:.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="lstm-scratch bench --json files")
    parser.add_argument(
        "--config",
        help='only this configuration (a, b, c, d, sample, "engine d dense, numpy first", …)',
    )
    args = parser.parse_args(argv)
    try:
        pooled = pool(args.files, args.config)
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError too
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not pooled:
        print("error: no round-by-round ratios in these files", file=sys.stderr)
        return 2
    print(format_pooled(pooled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
