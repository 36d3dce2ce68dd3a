"""``lstm-scratch bench``: training and sampling speed against torch.nn.LSTM on the same CPU.

Each measurement runs in its own process (``workers.py``), the implementations alternating
A B A B … for several rounds, so that neither inherits the other's warm caches or threads, and a
noisy moment hits both. Reported per configuration: chars/s median (min–max) of each, the ratio
lstm-scratch / (the faster torch path), the same ratio round by round (how far the host's speed
moves it), the fraction of the float32 GEMM peak of this machine, and the peak resident memory
of each process.

Configurations (float32, Adam, one-hot input, 2 threads):
    a: H 25, V 32, B 1, T 865 (the notebook's)     b: H 128, V 65, B 32, T 64
    d: H 256, V 65, B 64, T 100                    c: 2 layers of H 512, V 65, B 32, T 100
Sampling: config c, batch 1, one character at a time. ``--engine`` times the LSTM alone on
the same shapes (``run_engine``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from lstm_scratch.bench.workers import NUMPY_FIRST
from lstm_scratch.errors import ConfigError
from lstm_scratch.fast import host


@dataclass(frozen=True)
class BenchConfig:
    name: str
    hidden: int
    vocab: int
    batch: int
    seq_len: int
    layers: int = 1
    dtype: str = "float32"
    optimizer: str = "adam"
    threads: int = 2
    sample_length: int = 200
    cell: str = "lstm"  # the engine's layer: lstm, gru, rnn (tanh)

    def train_flops_per_char(self) -> float:
        """Multiply-adds × 2 per character for forward + backward (backward ≈ 2× forward)."""
        forward = 0
        for k in range(self.layers):
            inputs = self.vocab if k == 0 else self.hidden
            forward += 4 * self.hidden * (inputs + self.hidden)
        forward += self.hidden * self.vocab  # decoder
        return 2 * 3 * forward


CELLS = ("lstm", "gru", "rnn")
CONFIGS = {
    "a": BenchConfig("a", hidden=25, vocab=32, batch=1, seq_len=865),
    "b": BenchConfig("b", hidden=128, vocab=65, batch=32, seq_len=64),
    "d": BenchConfig("d", hidden=256, vocab=65, batch=64, seq_len=100),
    "c": BenchConfig("c", hidden=512, vocab=65, batch=32, seq_len=100, layers=2),
}
NOTEBOOK = BenchConfig(
    "notebook", hidden=25, vocab=32, batch=1, seq_len=865, dtype="float64", optimizer="sgd"
)


@dataclass
class BenchOptions:
    configs: tuple[BenchConfig, ...] = tuple(CONFIGS.values())
    rounds: int = 5
    seconds: float = 2.0  # timed per measurement, after warm-up
    torch: bool = True
    sampling: bool = True
    notebook: bool = True
    quick: bool = False
    engine: bool = False  # the LSTM alone (run_engine) instead of the character model
    cell: str = "lstm"  # the engine's layer: lstm, gru or rnn (tanh), against torch.nn's


def quick_options() -> BenchOptions:
    """A smoke run that finishes in well under a minute: configs a and b, one short round."""
    return BenchOptions(
        configs=(CONFIGS["a"], CONFIGS["b"]), rounds=1, seconds=0.3, notebook=False, quick=True
    )


def make_options(
    quick=False,
    configs="",
    custom: dict | None = None,
    rounds=None,
    seconds=None,
    torch=True,
    engine=False,
    cell="lstm",
) -> BenchOptions:
    """Options from the command line. ``configs``: names from CONFIGS, comma-separated (all when
    empty); ``custom``: hidden / batch / seq_len / layers / vocab for one more configuration."""
    options = quick_options() if quick else BenchOptions()
    if configs:
        names = [n.strip() for n in configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise ConfigError(f"unknown config {unknown[0]!r}: choose from {', '.join(CONFIGS)}")
        options.configs = tuple(CONFIGS[n] for n in names)
    custom = {k: v for k, v in (custom or {}).items() if v is not None}
    if custom:
        for key, value in custom.items():
            if value < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
        base = dict(hidden=128, vocab=65, batch=32, seq_len=100, layers=1) | custom
        options.configs = (*(options.configs if configs else ()), BenchConfig("custom", **base))
    if rounds is not None:
        if rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {rounds}")
        options.rounds = rounds
    if seconds is not None:
        if not 0 < seconds < 3600:
            raise ConfigError(f"--seconds must be in (0, 3600), got {seconds}")
        options.seconds = seconds
    if cell not in CELLS:
        raise ConfigError(f"unknown cell {cell!r}: choose from {', '.join(CELLS)}")
    if cell != "lstm" and not engine:
        raise ConfigError("--cell times the layer alone: give it with --engine")
    options.torch, options.engine, options.cell = torch, engine, cell
    return options


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def machine_info() -> dict:
    """BLAS libraries, their kernels, threads and idle poll (threadpoolctl), the OpenBLAS
    variables, the vectors the kernel is compiled for, cores."""
    blas = [
        {k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    names = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_THREAD_TIMEOUT")
    env = {k: os.environ.get(k) for k in names}
    return {
        "cpus": os.cpu_count(),
        "blas": blas,
        "openblas_env": env,
        "numpy": np.__version__,
        "step_lanes": host.step_lanes(),
        "blas_idle_polls": host.blas_idle_polls(),
        "kernel_isa": host.kernel_isa(),
    }


def gemm_peak_gflops(threads: int = 2, size: int = 1024, seconds: float = 1.0) -> float:
    """float32 GEMM GFLOP/s on this machine (the best of repeated size³ products)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    best = np.inf
    with threadpool_limits(threads, user_api="blas"):
        a @ b  # warm-up, outside the timed window
        start = time.perf_counter()
        while best == np.inf or time.perf_counter() - start < seconds:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


# a worker started as a program that imported NumPy and SciPy (each with its OpenBLAS) first
_NUMPY_FIRST = """import importlib.util, sys
import numpy
if importlib.util.find_spec("scipy"):
    import scipy.linalg
from lstm_scratch.bench.workers import main
main(sys.argv[1:])"""


def run_worker(task: str, impl: str, config: BenchConfig, seconds: float) -> dict:
    """One measurement in a fresh process; returns its JSON report. The process imports
    lstm_scratch first, or NumPy first for an implementation named ``…-numpy-first``."""
    args = [task, impl, json.dumps(dataclasses.asdict(config)), str(seconds)]
    start = (
        ["-c", _NUMPY_FIRST] if impl.endswith(NUMPY_FIRST) else ["-m", "lstm_scratch.bench.workers"]
    )
    done = subprocess.run(
        [sys.executable, *start, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{task} {impl} on config {config.name} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    rates = [r["chars_per_s"] for r in runs]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "runs": rates,
    }


def measure(task: str, impls: list[str], config: BenchConfig, rounds: int, seconds: float, log):
    """Alternate the implementations for ``rounds`` rounds; a summary per implementation."""
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for round_ in range(rounds):
        for impl in impls:
            runs[impl].append(run_worker(task, impl, config, seconds))
            log(
                f"  {task} {config.name} round {round_ + 1}/{rounds} {impl}: "
                f"{runs[impl][-1]['chars_per_s']:,.0f} chars/s"
            )
    return {impl: summarise(r) for impl, r in runs.items()}


def ratio_to_torch(results: dict) -> float | None:
    torch_rates = [v["median"] for k, v in results.items() if k.startswith("torch")]
    return results["scratch"]["median"] / max(torch_rates) if torch_rates else None


def round_ratios(results: dict) -> list[float] | None:
    """Round by round, lstm-scratch's rate over the faster of the others' in the same round
    (whose processes ran one after the other): how far the ratio moves with the host's speed."""
    others = [v["runs"] for k, v in results.items() if k != "scratch"]
    if not others:
        return None
    rounds = zip(results["scratch"]["runs"], *others, strict=True)
    return [ours / max(theirs) for ours, *theirs in rounds]


def run_bench(options: BenchOptions, log=print) -> dict:
    """Run everything ``options`` asks for; returns the full report (what --json writes)."""
    use_torch = options.torch and torch_available()
    impls = ["scratch", "torch", "torch-nomkldnn"] if use_torch else ["scratch"]
    if options.quick and use_torch:
        impls = ["scratch", "torch"]
    report = {"machine": machine_info(), "torch": use_torch, "quick": options.quick}
    if options.torch and not use_torch:
        log("torch is not installed: reporting lstm-scratch alone (pip install torch to compare)")
    if options.engine:
        report["engine"] = run_engine(options, use_torch, log)
        return report
    # A shared machine's speed drifts by tens of percent over minutes, so the peak is taken
    # before and after every configuration and the best of those is the reference.
    peak_seconds = 0.3 if options.quick else 1.0
    peaks = [gemm_peak_gflops(seconds=peak_seconds)]
    report["train"] = {}
    for config in options.configs:
        results = measure("train", impls, config, options.rounds, options.seconds, log)
        peaks.append(gemm_peak_gflops(seconds=peak_seconds))
        report["train"][config.name] = {
            "config": dataclasses.asdict(config),
            "results": results,
            "ratio": ratio_to_torch(results),
            "round_ratios": round_ratios(results),
        }
    report["gemm_peak_gflops"] = peak = max(peaks)
    report["gemm_peak_samples"] = peaks
    for config in options.configs:
        for summary in report["train"][config.name]["results"].values():
            summary["peak_fraction"] = (
                summary["median"] * config.train_flops_per_char() / 1e9 / peak
            )
    if options.sampling:
        config = (
            CONFIGS["c"]
            if not options.quick
            else dataclasses.replace(CONFIGS["b"], sample_length=50)
        )
        results = measure("sample", impls, config, options.rounds, options.seconds, log)
        report["sample"] = {
            "config": config.name,
            "results": results,
            "ratio": ratio_to_torch(results),
            "round_ratios": round_ratios(results),
        }
    if options.notebook:
        results = measure(
            "train", ["scratch", "notebook"], NOTEBOOK, options.rounds, options.seconds, log
        )
        report["notebook"] = {
            "results": results,
            "ratio": results["scratch"]["median"] / results["notebook"]["median"],
            "round_ratios": round_ratios(results),
        }
    return report


ORDERS = {"scratch": "lstm_scratch first", "scratch" + NUMPY_FIRST: "numpy first"}


def run_engine(options: BenchOptions, use_torch: bool, log) -> dict:
    """The public LSTM (or GRU, or RNN: ``options.cell``) alone, forward + backward, against
    torch.nn's, on dense input and on ids, each with lstm_scratch or NumPy imported first: one
    entry per configuration, input and import order, each with the torch runs of its rounds.
    Entries of another cell than the LSTM start with its name ("gru d dense, numpy first")."""
    entries, prefix = {}, "" if options.cell == "lstm" else f"{options.cell} "
    for config in (dataclasses.replace(c, cell=options.cell) for c in options.configs):
        for kind in ("dense", "ids"):
            impls = [*ORDERS, "torch"] if use_torch else [*ORDERS]
            results = measure(f"engine-{kind}", impls, config, options.rounds, options.seconds, log)
            for impl, order in ORDERS.items():
                pair = {"scratch": results[impl]} | (
                    {"torch": results["torch"]} if use_torch else {}
                )
                entries[f"{prefix}{config.name} {kind}, {order}"] = {
                    "config": dataclasses.asdict(config),
                    "results": pair,
                    "ratio": ratio_to_torch(pair),
                    "round_ratios": round_ratios(pair),
                }
    return entries


def _machine_line(report: dict) -> str:
    m = report["machine"]
    blas = ", ".join(
        f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['num_threads']} threads)"
        for b in m["blas"]
    )
    peak = ""
    if "gemm_peak_gflops" in report:
        samples = ", ".join(f"{p:.0f}" for p in report["gemm_peak_samples"])
        peak = f"; float32 GEMM peak {report['gemm_peak_gflops']:.0f} GFLOP/s (best of {samples})"
    return (
        f"machine: {m['cpus']} cpus; numpy {m['numpy']}; BLAS {blas}; "
        f"OPENBLAS_CORETYPE={m['openblas_env']['OPENBLAS_CORETYPE']}; "
        f"OPENBLAS_THREAD_TIMEOUT in use {m.get('blas_idle_polls')}; lanes {m.get('step_lanes')}; "
        f"kernel {m.get('kernel_isa')}" + peak
    )


def format_report(report: dict) -> str:
    """The human-readable table."""
    lines = [
        _machine_line(report),
        "chars/s, median (min-max); ratio = lstm-scratch / faster torch path (medians), then"
        " round by round: median (min-max)",
    ]

    def rows(title, results, ratio, extra="", per_round=None):
        cells = [
            f"{impl} {s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f}), "
            f"{s['peak_rss_mib']:.0f} MiB"
            + (f", {s['peak_fraction']:.1%} of peak" if "peak_fraction" in s else "")
            for impl, s in results.items()
        ]
        ratio_text = f"  ratio {ratio:.2f}x" if ratio is not None else ""
        if per_round:
            ratio_text += (
                f"; round by round {statistics.median(per_round):.2f}x"
                f" ({min(per_round):.2f}-{max(per_round):.2f})"
            )
        lines.append(f"{title}{extra}:{ratio_text}")
        lines.extend(f"    {cell}" for cell in cells)

    for name, entry in report.get("engine", {}).items():
        c = entry["config"]
        shape = f" (H {c['hidden']}, L {c['layers']}, B {c['batch']}, T {c['seq_len']})"
        rows(f"engine {name}", entry["results"], entry["ratio"], shape, entry.get("round_ratios"))
    for name, entry in report.get("train", {}).items():
        c = entry["config"]
        shape = (
            f" (H {c['hidden']}, L {c['layers']}, V {c['vocab']}, B {c['batch']}, T {c['seq_len']})"
        )
        rows(f"train {name}", entry["results"], entry["ratio"], shape, entry.get("round_ratios"))
    if "sample" in report:
        s = report["sample"]
        rows(
            f"sample (config {s['config']}, batch 1)",
            s["results"],
            s["ratio"],
            per_round=s.get("round_ratios"),
        )
    if "notebook" in report:
        n = report["notebook"]
        rows(
            "notebook setup (float64 SGD) vs the notebook's code",
            n["results"],
            n["ratio"],
            per_round=n.get("round_ratios"),
        )
    return "\n".join(lines)
