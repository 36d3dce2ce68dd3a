"""What a model needs in memory, estimated before anything is allocated, and what the machine has.

A size that no machine holds (``--hidden-size 100000``, ``--num-layers 5000``) is refused in one
line with the estimate, before NumPy tries to allocate it; an allocation that fails anyway is
reported the same way by the CLI (``out_of_memory_message``).

Letters for shapes: T time, B batch, E embedding size, H hidden, V vocabulary, L layers,
P parameters. The estimate counts, in the model's dtype, what a process of the default
(compiled) backend holds at its peak:

- the parameters, and for training their gradients, the optimizer's moments (two for Adam,
  one for SGD with momentum) and the packed copies of W_hh that the compiled lanes make;
- the larger of one batch's activations and a checkpoint being written. Per character of a
  training batch: per layer the cache (LSTM: gates 4H, h, c, tanh c: 7H; GRU: gates 3H, h,
  W_hn h: 5H; RNN: its input projection and h: 2H) and, for the GRU and the RNN, one layer's
  gradients of its pre-activations (GRU 6H, RNN H); with dropout, a mask per
  layer and for the top output, and the masked output (L + 2 times H); the embedding's output
  and gradient (2E); the logits, their softmax and their gradient (3V); one layer's input
  gradient (H). A checkpoint is encoded in memory: two copies of the
  weights and of the optimizer's moments;
- the process itself (Python, NumPy, numba): ``BASE_BYTES``.

For the LSTM the estimate is 0.95-1.13 times the peak RSS of two-step training runs (nine
shapes from H 64 to 2048, one to three layers, float32 and float64, SGD, SGD with momentum and
Adam, dropout, either backend), and 1.01-1.16 for the GRU and the RNN on two of those shapes
(``tests/model/test_memory.py`` holds every cell within 0.8-1.25).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lstm_scratch.errors import LstmScratchError
from lstm_scratch.model.charlm import CELLS

BASE_BYTES = 200 * 2**20  # the interpreter, NumPy, numba and the compiled kernels
GIB = 2**30


class ResourceError(LstmScratchError):
    """The machine cannot hold what was asked for."""


#: per cell, per character of a batch: (a layer's cache, one layer's backward arrays) in units of H
LAYER_ACTIVATIONS = {"lstm": (7, 0), "gru": (5, 6), "rnn": (2, 1)}


def parameter_count(config) -> int:
    """P of a ModelConfig: embedding (V, E), L layers of W_ih, W_hh, b_ih, b_hh, decoder."""
    V, H, E, L = config.vocab_size, config.hidden_size, config.embed_size, config.num_layers
    G = CELLS[config.cell] * H  # the stacked pre-activations
    layers = G * ((E or V) + H + 2) + (L - 1) * G * (2 * H + 2)
    return V * E + layers + V * (H + 1)


def activation_bytes(config, batch: int, seq_len: int, training: bool) -> int:
    """One batch of (T, B) characters through the model; with ``training``, its backward too."""
    V, H, E, L = config.vocab_size, config.hidden_size, config.embed_size, config.num_layers
    cache, backward = LAYER_ACTIVATIONS[config.cell]
    masks = (L + 2) * H if training and config.dropout else 0  # and the masked top output
    per_char = L * cache * H + masks + (2 * E + 3 * V + H if training else E + 2 * V)
    per_char += backward * H if training else 0
    return seq_len * batch * per_char * np.dtype(config.dtype).itemsize


def training_bytes(config, batch: int, seq_len: int, moments: int) -> int:
    """A training process: parameters, gradients, ``moments`` optimizer moments per parameter,
    packed W_hh, and the largest of a step's activations, an evaluation's (T at least 64) and
    a checkpoint's encoding."""
    itemsize = np.dtype(config.dtype).itemsize
    weights = parameter_count(config) * itemsize
    packed = config.num_layers * CELLS[config.cell] * config.hidden_size**2 * itemsize
    step = activation_bytes(config, batch, seq_len, training=True)
    evaluation = activation_bytes(config, batch, max(seq_len, 64), training=False)
    saving = 2 * (1 + moments) * weights
    return BASE_BYTES + (2 + moments) * weights + packed + max(step, evaluation, saving)


def inference_bytes(config, batch: int, seq_len: int) -> int:
    """A process that loads a model (the file's tensors and the model's copy) and runs it
    forward on (T, B) characters."""
    weights = parameter_count(config) * np.dtype(config.dtype).itemsize
    return BASE_BYTES + 2 * weights + activation_bytes(config, batch, seq_len, training=False)


def _meminfo() -> dict[str, int]:
    """/proc/meminfo's fields in bytes (empty where there is none)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields


def _cgroup_room() -> int | None:
    """What the process's cgroup (v2) still allows, where it sets a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if not limit.isdigit() or not used.isdigit():
        return None
    return max(0, int(limit) - int(used))


def available_bytes() -> tuple[int | None, int | None]:
    """(memory available now, the machine's total): MemAvailable and MemTotal, each lowered to
    what a cgroup limit leaves; None where neither can be read."""
    info = _meminfo()
    available, total = info.get("MemAvailable"), info.get("MemTotal")
    if total is None and hasattr(os, "sysconf"):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            total = None
    room = _cgroup_room()
    if room is not None:
        available = room if available is None else min(available, room)
    return available, total


def gib(n: int) -> str:
    """A byte count in GiB as the messages print it (~447 GiB, ~1.5 GiB, ~0.21 GiB)."""
    value = n / GIB
    return f"{value:.0f} GiB" if value >= 10 else f"{value:.2g} GiB"


def machine_phrase() -> str:
    """'the machine has 23 GiB available (24 GiB in all)', or less where it cannot be read."""
    available, total = available_bytes()
    if available is None:
        return (
            "the machine's memory could not be read"
            if total is None
            else (f"the machine has {gib(total)}")
        )
    in_all = f" ({gib(total)} in all)" if total is not None else ""
    return f"the machine has {gib(available)} available{in_all}"


def check_fits(needed: int, what: str, advice: str) -> None:
    """Refuse in one line (:class:`ResourceError`) when ``needed`` bytes exceed what the machine
    has available now; nothing happens where that cannot be read."""
    available, _ = available_bytes()
    if available is not None and needed > available:
        raise ResourceError(f"{what} needs ~{gib(needed)}; {machine_phrase()}: {advice}")


def out_of_memory_message(error: MemoryError) -> str:
    """One line for an allocation that failed although the estimate let it through."""
    detail = str(error).splitlines()[0] if str(error) else "an allocation failed"
    return f"out of memory ({detail}); {machine_phrase()}: use a smaller model, batch or --seq-len"
