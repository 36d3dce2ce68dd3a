"""benchmarks/pooled.py: bench runs' round-by-round ratios pooled, with a bootstrap interval."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pooled.py"


@pytest.fixture(scope="module")
def pooled():
    spec = importlib.util.spec_from_file_location("pooled", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, report):
    path.write_text(json.dumps(report))
    return str(path)


def _entry(scratch, torch, with_rounds):
    entry = {
        "results": {"scratch": {"runs": scratch}, "torch": {"runs": torch}},
        "ratio": float(np.median(scratch) / np.median(torch)),
    }
    if with_rounds:
        entry["round_ratios"] = [s / t for s, t in zip(scratch, torch, strict=True)]
    return entry


def test_rounds_of_all_files_are_pooled_old_reports_included(pooled, tmp_path, capsys):
    new = _write(
        tmp_path / "new.json",
        {
            "train": {"d": _entry([15.0, 13.0, 16.0], [10.0, 10.0, 10.0], True)},
            "sample": _entry([40.0, 50.0], [10.0, 10.0], True),
        },
    )
    old = _write(
        tmp_path / "old.json",
        {
            "train": {  # no round_ratios: made from the runs
                "d": _entry([12.0, 14.0], [10.0, 10.0], False),
                "b": _entry([2.0], [1.0], False),
            }
        },
    )
    found = pooled.pool([new, old])
    assert found["d"]["rounds"] == pytest.approx([1.5, 1.3, 1.6, 1.2, 1.4])
    assert found["sample"]["rounds"] == pytest.approx([4.0, 5.0])
    assert pooled.main([new, old]) == 0
    printed = capsys.readouterr().out
    low, high = pooled.median_interval([1.5, 1.3, 1.6, 1.2, 1.4])
    assert low <= 1.4 <= high
    assert (
        f"d: 5 rounds from 2 runs, median 1.400x (95 % {low:.3f}-{high:.3f}); "
        "3 of 5 rounds >= 1.4x, 1 of 2 runs"
    ) in printed
    assert "sample: 2 rounds from 1 runs" in printed and "2 of 2 rounds >= 3.0x" in printed
    assert "old.json: 1.30x, round by round 1.30x" in printed
    assert pooled.main([new, old, "--config", "b"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("b: 1 rounds from 1 runs")


def test_interval_is_seeded_and_narrows_with_more_rounds(pooled):
    rng = np.random.default_rng(1)
    few, many = rng.normal(1.4, 0.1, 10), rng.normal(1.4, 0.1, 200)
    assert pooled.median_interval(few) == pooled.median_interval(few)
    (low_few, high_few), (low_many, high_many) = map(pooled.median_interval, (few, many))
    assert high_many - low_many < high_few - low_few


def test_bad_files_give_one_line_and_exit_2(pooled, tmp_path, capsys):
    assert pooled.main([str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    empty = _write(tmp_path / "empty.json", {"train": {}})
    assert pooled.main([empty]) == 2
    assert "no round-by-round ratios" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert pooled.main([str(broken)]) == 2
    listed = _write(tmp_path / "list.json", [1, 2])
    assert pooled.main([listed]) == 2
    assert "not a lstm-scratch bench --json report" in capsys.readouterr().err
    odd = _write(tmp_path / "odd.json", {"train": {"d": [1.5]}})
    assert pooled.main([odd]) == 2
    assert capsys.readouterr().err == "error: d: not a bench entry\n"
