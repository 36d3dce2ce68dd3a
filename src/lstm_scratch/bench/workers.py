"""The timed work of ``lstm-scratch bench``, one implementation per process.

    python -m lstm_scratch.bench.workers train scratch '{"hidden": 25, ...}' 3.0
    python -m lstm_scratch.bench.workers sample torch '{"hidden": 512, ...}' 3.0

prints one JSON line: chars/s, steps timed, seconds, peak RSS. The implementations do identical
work: one-hot input (T, B, V) -> L-layer LSTM -> linear -> softmax cross-entropy, backward,
Adam step, float32, zero initial state; sampling feeds one character at a time at batch 1.
Training processes, ours and torch's alike, run with ``host.keep_freed_memory`` (glibc keeps
freed activations for the next step instead of faulting their pages in again; it makes torch
1.3x faster on config d too, so giving it to one side only would flatter that side).
"scratch" is this project; "torch" is torch.nn.LSTM with its defaults (oneDNN); "torch-nomkldnn"
the same with ``torch.backends.mkldnn.enabled = False``; "notebook" a re-creation of the original
notebook's code structure (per-step Python loop, one ``np.dot`` per gate on [h, x], float64,
plain SGD), timed on the notebook's configuration only. The engine tasks time the LSTM alone,
forward and backward, on dense input or ids ("engine-dense", "engine-ids"), each library as a
user gets it: no malloc setting given to either (lstm-scratch's LSTM sets its own,
``host.keep_freed_memory_for``). An implementation
named with ``-numpy-first`` is started with NumPy and SciPy imported before lstm_scratch
(``harness.run_worker``). torch is imported here, never by the library.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

LEARNING_RATE = 1e-3


def _timed(step, seconds: float, warmup: int = 2) -> tuple[int, float]:
    """Run ``step`` ``warmup`` times, then until ``seconds`` have passed (at least 3 times)."""
    for _ in range(warmup):
        step()
    start, steps = time.perf_counter(), 0
    while steps < 3 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps, time.perf_counter() - start


def _data(c: dict):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, c["vocab"], (c["seq_len"] + 1, c["batch"]))  # (T+1, B)
    return ids[:-1], ids[1:]


def train_scratch(c: dict, seconds: float):
    from threadpoolctl import threadpool_limits

    from lstm_scratch.fast import host
    from lstm_scratch.model.charlm import CharLM, ModelConfig
    from lstm_scratch.training.optim import OptimizerConfig, make_optimizer

    config = ModelConfig(c["vocab"], c["hidden"], c["layers"], embed_size=0, dtype=c["dtype"])
    model = CharLM(config, backend=c.get("backend", "auto"))
    optimizer = make_optimizer(
        OptimizerConfig(c["optimizer"], lr=LEARNING_RATE), model.num_parameters, model.dtype
    )
    inputs, targets = _data(c)
    host.keep_freed_memory()  # as lstm-scratch train does, and as torch gets here too

    def step():
        _, grads, _ = model.loss_and_grads(inputs, targets)
        optimizer.step(model.params.flat, grads.flat, LEARNING_RATE)

    with threadpool_limits(host.blas_threads(c["batch"], c["hidden"]), user_api="blas"):
        return _timed(step, seconds)


def _torch_threads(c: dict, mkldnn: bool):
    """torch, set to c["threads"] threads, oneDNN on or off, seeded."""
    import torch

    torch.set_num_threads(c["threads"])
    torch.backends.mkldnn.enabled = mkldnn
    torch.manual_seed(0)
    return torch


def _torch_model(c: dict, mkldnn: bool):
    torch = _torch_threads(c, mkldnn)
    lstm = torch.nn.LSTM(c["vocab"], c["hidden"], c["layers"])
    head = torch.nn.Linear(c["hidden"], c["vocab"])
    return torch, lstm, head


def train_torch(c: dict, seconds: float, mkldnn: bool = True):
    from lstm_scratch.fast import host

    host.keep_freed_memory()  # the same malloc setting as lstm-scratch's (torch gains too)
    torch, lstm, head = _torch_model(c, mkldnn)
    inputs, targets = (torch.from_numpy(a) for a in _data(c))
    x = torch.nn.functional.one_hot(inputs, c["vocab"]).float()  # (T, B, V)
    targets = targets.reshape(-1)
    params = [*lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)

    def step():
        optimizer.zero_grad(set_to_none=True)
        y, _ = lstm(x)
        loss = torch.nn.functional.cross_entropy(head(y).reshape(-1, c["vocab"]), targets)
        loss.backward()
        optimizer.step()

    return _timed(step, seconds)


def sample_scratch(c: dict, seconds: float):
    from lstm_scratch.model.charlm import CharLM, ModelConfig
    from lstm_scratch.training.sample import sample

    config = ModelConfig(c["vocab"], c["hidden"], c["layers"], embed_size=0, dtype=c["dtype"])
    model = CharLM(config)
    length = c["sample_length"]
    steps, elapsed = _timed(lambda: sample(model, np.array([0]), length, seed=0), seconds, 1)
    return steps * length, elapsed


def sample_torch(c: dict, seconds: float, mkldnn: bool = True):
    torch, lstm, head = _torch_model(c, mkldnn)
    eye = torch.eye(c["vocab"])
    generator = torch.Generator().manual_seed(0)
    length = c["sample_length"]

    @torch.no_grad()
    def run():
        state, char = None, 0
        for _ in range(length):
            y, state = lstm(eye[char].reshape(1, 1, -1), state)
            probs = torch.softmax(head(y[0, 0]), dim=-1)
            char = int(torch.multinomial(probs, 1, generator=generator))

    steps, elapsed = _timed(run, seconds, 1)
    return steps * length, elapsed


ENGINE_INPUT = 65  # D of the engine's input: dense floats, or ids meaning one-hot rows


def _engine_data(c: dict, ids: bool):
    """x (T, B, D) float32 or (T, B) ids, and dy (T, B, H), the same for every implementation."""
    rng = np.random.default_rng(0)
    shape = (c["seq_len"], c["batch"])  # (T, B)
    if ids:
        x = rng.integers(0, ENGINE_INPUT, shape)  # (T, B)
    else:
        x = rng.standard_normal((*shape, ENGINE_INPUT), dtype=np.float32)  # (T, B, D)
    return x, rng.standard_normal((*shape, c["hidden"]), dtype=np.float32)  # dy (T, B, H)


def engine_scratch(c: dict, seconds: float, ids: bool):
    """The public ``LSTM`` (``GRU``, ``RNN``: c["cell"]) as a library user calls it: forward,
    then backward (dx for dense input, none for ids), with BLAS's own thread count."""
    from lstm_scratch.model import lstm, recurrent  # what ``from lstm_scratch import …`` gives

    kinds = {"lstm": lstm.LSTM, "gru": recurrent.GRU, "rnn": recurrent.RNN}
    layer = kinds[c.get("cell", "lstm")](ENGINE_INPUT, c["hidden"], c["layers"], seed=0)
    x, dy = _engine_data(c, ids)

    def step():
        _, _, cache = layer.forward(x)
        layer.backward(dy, cache)

    return _timed(step, seconds)


def engine_torch(c: dict, seconds: float, ids: bool):
    """torch.nn.LSTM (GRU, RNN) forward, then backward: for dense input with dx, as ours; for
    ids, their one-hot rows as float input, without dx (torch has no ids input)."""
    torch = _torch_threads(c, mkldnn=True)
    kinds = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
    layer = kinds[c.get("cell", "lstm")](ENGINE_INPUT, c["hidden"], c["layers"])
    x, dy = (torch.from_numpy(a) for a in _engine_data(c, ids))
    if ids:
        x = torch.nn.functional.one_hot(x, ENGINE_INPUT).float()  # (T, B, D)
    else:
        x.requires_grad_(True)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = layer(x)
        y.backward(dy)

    return _timed(step, seconds)


def train_notebook(c: dict, seconds: float):
    """The notebook's structure: four gate matrices on [h, x], a Python loop over time steps
    in both passes, float64, plain SGD with elementwise clipping; its d_cs fixed."""
    rng = np.random.default_rng(0)
    V, H = c["vocab"], c["hidden"]
    gates = {g: rng.uniform(-0.1, 0.1, (H, H + V)) for g in "ifgo"}
    biases = {g: np.zeros((H, 1)) for g in "ifgo"}
    out_w, out_b = rng.uniform(-0.1, 0.1, (V, H)), np.zeros((V, 1))
    inputs, targets = _data(dict(c, batch=1))
    xs = [np.eye(V)[[i]].T for i in inputs[:, 0]]  # one-hot columns (V, 1)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    def epoch():
        h, cell, cache = np.zeros((H, 1)), np.zeros((H, 1)), []
        for x in xs:  # forward, one step at a time
            hx = np.concatenate((h, x))
            i, f = sigmoid(np.dot(gates["i"], hx) + biases["i"]), sigmoid(np.dot(gates["f"], hx))
            g, o = np.tanh(np.dot(gates["g"], hx)), sigmoid(np.dot(gates["o"], hx))
            cell_prev, cell = cell, f * cell + i * g
            h = o * np.tanh(cell)
            logits = np.dot(out_w, h) + out_b
            probs = np.exp(logits - logits.max())
            cache.append((hx, i, f, g, o, cell_prev, cell, h, probs / probs.sum()))
        grads = {g: np.zeros_like(w) for g, w in gates.items()}
        d_out_w, dh_next, dc_next = np.zeros_like(out_w), np.zeros((H, 1)), np.zeros((H, 1))
        for (hx, i, f, g, o, cell_prev, cell, h, probs), t in zip(
            cache[::-1], targets[::-1, 0], strict=True
        ):
            dy = probs.copy()
            dy[t] -= 1
            d_out_w += np.dot(dy, h.T)
            dh = np.dot(out_w.T, dy) + dh_next
            dc = (1 - np.tanh(cell) ** 2) * o * dh + dc_next
            d_gates = {
                "o": np.tanh(cell) * dh * o * (1 - o),
                "i": dc * g * i * (1 - i),
                "f": dc * cell_prev * f * (1 - f),
                "g": dc * i * (1 - g**2),
            }
            dhx = sum(np.dot(gates[k].T, d) for k, d in d_gates.items())
            for k, d in d_gates.items():
                grads[k] += np.dot(d, hx.T)
            dh_next, dc_next = dhx[:H], f * dc
        for k in gates:
            gates[k] -= 0.05 * np.clip(grads[k], -1, 1)
        out_w[...] -= 0.05 * np.clip(d_out_w, -1, 1)

    return _timed(epoch, seconds, 1)


WORKERS = {
    ("train", "scratch"): train_scratch,
    ("train", "torch"): train_torch,
    ("train", "torch-nomkldnn"): lambda c, s: train_torch(c, s, mkldnn=False),
    ("train", "notebook"): train_notebook,
    ("sample", "scratch"): sample_scratch,
    ("sample", "torch"): sample_torch,
    ("sample", "torch-nomkldnn"): lambda c, s: sample_torch(c, s, mkldnn=False),
    ("engine-dense", "scratch"): lambda c, s: engine_scratch(c, s, ids=False),
    ("engine-ids", "scratch"): lambda c, s: engine_scratch(c, s, ids=True),
    ("engine-dense", "torch"): lambda c, s: engine_torch(c, s, ids=False),
    ("engine-ids", "torch"): lambda c, s: engine_torch(c, s, ids=True),
}
NUMPY_FIRST = "-numpy-first"  # an implementation run with NumPy (and SciPy) imported before us


def _first_loaded() -> str:
    """ "numpy" or "lstm_scratch": whose modules finished loading first in this process.
    (sys.modules keeps that order; lstm_scratch's first module to finish, ``lstm_scratch.model``
    imports nothing.)"""
    names = (name.split(".")[0] for name in sys.modules)
    return next(name for name in names if name in ("numpy", "lstm_scratch"))


def main(argv: list[str]) -> None:
    task, impl, config, seconds = argv[0], argv[1], json.loads(argv[2]), float(argv[3])
    steps, elapsed = WORKERS[task, impl.removesuffix(NUMPY_FIRST)](config, seconds)
    chars = steps if task == "sample" else steps * config["seq_len"] * config["batch"]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    report = {"chars_per_s": chars / elapsed, "steps": steps, "seconds": elapsed}
    if impl.startswith("scratch"):
        from lstm_scratch.fast import host

        report["lanes"] = host.step_lanes()
        report["first"] = _first_loaded()
    print(json.dumps({**report, "peak_rss_mib": peak_kib / 1024}))


if __name__ == "__main__":
    main(sys.argv[1:])
