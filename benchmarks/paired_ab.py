"""Paired A/B of two (or more) source trees of lstm_scratch in one process: which version of the
code trains faster, on a machine too noisy for separate processes to tell.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/paired_ab.py \
        /path/to/old/src src --config d --rounds 30

Each tree's package is imported under a name of its own (numba's cache goes to a temporary
folder, so the trees' caches are left as they were). A training step of each (forward, loss,
backward, Adam; float32, one-hot input) runs in turn, the order reversed every other round, and
the report gives each tree's median step and the median of its per-round differences from the
first tree. Why: the machine's speed drifts from one process to the next by more than most
single changes save; on config d, four runs of one pair of trees gave −0.05, −0.75, −1.14 and
−1.92 ms, on c (400–480 ms steps) two gave −15.7 and +4.1 ms. A tree
from before the package's imports were all relative takes ``optim``'s Adam from the installed
lstm_scratch.
"""

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {  # hidden, batch, seq_len, layers (vocab 65), as lstm-scratch bench's
    "a": (25, 1, 865, 1),
    "b": (128, 32, 64, 1),
    "d": (256, 64, 100, 1),
    "c": (512, 32, 100, 2),
}


def load(tree: Path, name: str):
    """The package ``tree``/lstm_scratch imported as ``name``, with its model and optim."""
    package = tree / "lstm_scratch"
    spec = importlib.util.spec_from_file_location(
        name, package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return (importlib.import_module(f"{name}.{part}") for part in ("model", "optim", "backend"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+", type=Path, help="folders holding lstm_scratch/")
    p.add_argument("--config", choices=sorted(CONFIGS), default="d")
    p.add_argument("--rounds", type=int, default=30)
    a = p.parse_args(argv)
    os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="paired-ab-numba-"))
    loaded = [load(tree.resolve(), f"lstm_scratch_{k}") for k, tree in enumerate(a.trees)]
    import numpy as np  # after the first tree set OpenBLAS's idle poll, as lstm_scratch does
    from threadpoolctl import threadpool_limits

    hidden, batch, seq_len, layers = CONFIGS[a.config]
    ids = np.random.default_rng(0).integers(0, 65, (seq_len + 1, batch))  # (T+1, B)
    steps = []
    for model_module, optim_module, backend in loaded:
        backend.keep_freed_memory()
        config = model_module.ModelConfig(65, hidden, layers, 0, dtype="float32")
        model = model_module.CharLM(config)
        optimizer = optim_module.make_optimizer(
            optim_module.OptimizerConfig("adam", lr=1e-3), model.num_parameters, model.dtype
        )

        def step(model=model, optimizer=optimizer):
            _, grads, _ = model.loss_and_grads(ids[:-1], ids[1:])
            optimizer.step(model.params.flat, grads.flat, 1e-3)

        for _ in range(3):  # compile, and let the lanes' balance settle
            step()
        steps.append(step)
    times = [[] for _ in steps]  # ms per step, per tree
    with threadpool_limits(backend.blas_threads(batch, hidden), user_api="blas"):  # as bench's
        for round_ in range(a.rounds):
            order = range(len(steps)) if round_ % 2 == 0 else reversed(range(len(steps)))
            for k in order:
                start = time.perf_counter()
                steps[k]()
                times[k].append((time.perf_counter() - start) * 1e3)
    first = np.array(times[0])
    for tree, measured in zip(a.trees, times, strict=True):
        line = f"{tree}: median {np.median(measured):.2f} ms, min {min(measured):.2f}"
        if measured is not times[0]:
            line += f", paired difference median {np.median(np.array(measured) - first):+.2f} ms"
        print(line)


if __name__ == "__main__":
    main()
