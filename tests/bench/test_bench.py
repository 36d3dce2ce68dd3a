"""``lstm-scratch bench``: options, the report's shape, and a smoke run. Never a speed assert."""

import json

import pytest

from lstm_scratch.app.cli import main
from lstm_scratch.bench import harness as bench
from lstm_scratch.bench import workers as bench_workers
from lstm_scratch.errors import ConfigError


def test_options_from_the_command_line():
    quick = bench.make_options(quick=True)
    assert [c.name for c in quick.configs] == ["a", "b"] and quick.rounds == 1
    full = bench.make_options(configs="c,a", rounds=7, seconds=1.5)
    assert [c.name for c in full.configs] == ["c", "a"] and full.rounds == 7
    custom = bench.make_options(custom={"hidden": 64, "batch": 8, "seq_len": None})
    (config,) = custom.configs
    assert (config.name, config.hidden, config.batch, config.seq_len) == ("custom", 64, 8, 100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"configs": "a,e"}, "unknown config 'e'"),
        ({"custom": {"hidden": 0}}, "--hidden must be >= 1"),
        ({"rounds": 0}, "--rounds must be >= 1"),
        ({"seconds": -1.0}, "--seconds must be in"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        bench.make_options(**kwargs)


def test_cli_bad_option_exits_2(capsys):
    assert main(["bench", "--configs", "zz"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown config" in err


def test_flops_per_char_counts_every_layer():
    one, two = bench.CONFIGS["d"], bench.CONFIGS["c"]
    assert one.train_flops_per_char() == 6 * (4 * 256 * (65 + 256) + 256 * 65)
    assert two.train_flops_per_char() == 6 * (4 * 512 * (65 + 512) + 4 * 512 * 1024 + 512 * 65)


def test_workers_do_the_work_they_report():
    tiny = dict(
        hidden=8,
        vocab=11,
        batch=2,
        seq_len=5,
        layers=2,
        dtype="float32",
        optimizer="adam",
        threads=1,
        sample_length=7,
    )
    for name in ("scratch", "torch", "notebook"):
        steps, seconds = bench_workers.WORKERS["train", name](tiny, 0.0)
        assert steps >= 3 and seconds > 0
    for name in ("scratch", "torch"):
        chars, _ = bench_workers.WORKERS["sample", name](tiny, 0.0)
        assert chars % 7 == 0 and chars >= 21
    for task in ("engine-dense", "engine-ids"):
        for name in ("scratch", "torch"):
            for cell in ("lstm", "gru", "rnn"):
                config = dict(tiny, cell=cell)
                steps, seconds = bench_workers.WORKERS[task, name](config, 0.0)
                assert steps >= 3 and seconds > 0


@pytest.mark.slow
def test_engine_run_times_both_import_orders_against_torch(tmp_path, capsys):
    out = tmp_path / "engine.json"
    argv = ["bench", "--engine", "--quick", "--configs", "b", "--seconds", "0.05"]
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["kernel_isa"] in ("avx2", "avx512")
    engine = report["engine"]
    assert set(engine) == {
        f"b {kind}, {order}"
        for kind in ("dense", "ids")
        for order in ("lstm_scratch first", "numpy first")
    }
    for name, entry in engine.items():
        assert set(entry["results"]) == {"scratch", "torch"} and entry["ratio"] > 0, name
        assert len(entry["round_ratios"]) == 1
    printed = capsys.readouterr().out
    assert "engine b dense, numpy first (H 128" in printed and "kernel avx" in printed


@pytest.mark.parametrize("impl", ["scratch", "scratch-numpy-first"])
def test_a_worker_starts_with_the_import_order_its_name_says(impl):
    tiny = bench.BenchConfig("tiny", hidden=8, vocab=11, batch=2, seq_len=5)
    report = bench.run_worker("engine-dense", impl, tiny, 0.0)
    assert report["first"] == ("numpy" if impl.endswith("numpy-first") else "lstm_scratch")
    assert report["steps"] >= 3


@pytest.mark.slow
def test_bench_smoke_run_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--configs", "a", "--seconds", "0.05", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["quick"] and report["gemm_peak_gflops"] > 0
    assert len(report["gemm_peak_samples"]) == 2  # before and after the one configuration
    results = report["train"]["a"]["results"]
    assert set(results) == {"scratch", "torch"}
    assert all(r["median"] > 0 and r["peak_rss_mib"] > 0 for r in results.values())
    assert report["train"]["a"]["ratio"] > 0 and "sample" in report
    assert len(report["train"]["a"]["round_ratios"]) == 1  # one round in --quick
    printed = capsys.readouterr().out
    assert "train a (H 25" in printed and "ratio" in printed and "BLAS" in printed


def test_round_ratios_pair_each_round_with_the_faster_other():
    results = {
        "scratch": {"runs": [10.0, 12.0, 9.0]},
        "torch": {"runs": [5.0, 8.0, 3.0]},
        "torch-nomkldnn": {"runs": [4.0, 6.0, 4.5]},
    }
    assert bench.round_ratios(results) == [2.0, 1.5, 2.0]
    assert bench.round_ratios({"scratch": {"runs": [1.0]}}) is None


def test_report_prints_the_round_by_round_ratios():
    summary = {"median": 1.0, "min": 1.0, "max": 1.0, "peak_rss_mib": 1.0}
    report = {
        "machine": {
            "cpus": 2,
            "numpy": "2",
            "blas": [],
            "openblas_env": {"OPENBLAS_CORETYPE": None},
        },
        "gemm_peak_gflops": 100.0,
        "gemm_peak_samples": [100.0],
        "train": {
            "d": {
                "config": dict(hidden=256, layers=1, vocab=65, batch=64, seq_len=100),
                "results": {"scratch": summary, "torch": summary},
                "ratio": 1.4,
                "round_ratios": [1.2, 1.5, 1.3],
            }
        },
    }
    assert "ratio 1.40x; round by round 1.30x (1.20-1.50)" in bench.format_report(report)


def test_a_gru_engine_run_names_its_entries_by_the_cell(tmp_path):
    out = tmp_path / "engine.json"
    argv = ["bench", "--engine", "--cell", "gru", "--quick", "--configs", "a", "--seconds", "0.05"]
    assert main([*argv, "--no-torch", "--json", str(out)]) == 0
    engine = json.loads(out.read_text())["engine"]
    assert set(engine) == {
        f"gru a {kind}, {order}"
        for kind in ("dense", "ids")
        for order in ("lstm_scratch first", "numpy first")
    }
    assert all(entry["config"]["cell"] == "gru" for entry in engine.values())


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--engine", "--cell", "lstm2"], "unknown cell 'lstm2'"), (["--cell", "gru"], "--engine")],
)
def test_a_bad_cell_is_one_line(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
