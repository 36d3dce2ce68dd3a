"""Named parameter arrays that live in one flat buffer.

Every parameter of a model is a view into a single contiguous 1-D array, so an optimizer updates the
whole model with a few vectorised operations and a data-parallel run averages gradients with one
Allreduce. Gradients use the same layout (``zeros_like``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


class FlatParams:
    """An ordered set of named arrays that are views into one contiguous 1-D buffer ``flat``."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtype=np.float32, zeros=True):
        self.shapes = {name: tuple(int(n) for n in shape) for name, shape in shapes.items()}
        self.dtype = np.dtype(dtype)
        total = sum(math.prod(shape) for shape in self.shapes.values())
        self.flat = (np.zeros if zeros else np.empty)(total, dtype=self.dtype)  # (P,)
        self.arrays: dict[str, np.ndarray] = {}
        start = 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            self.arrays[name] = self.flat[start : start + size].reshape(shape)
            start += size

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __len__(self) -> int:
        return len(self.arrays)

    def zeros_like(self) -> FlatParams:
        """A new buffer with the same names and shapes, filled with zeros (for gradients)."""
        return FlatParams(self.shapes, self.dtype)

    def empty_like(self) -> FlatParams:
        """As ``zeros_like``, not filled: for gradients of which every entry gets written (it
        saves a pass over the whole buffer each training step)."""
        return FlatParams(self.shapes, self.dtype, zeros=False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every array, by name."""
        return {name: array.copy() for name, array in self.arrays.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy ``state`` in, cast to this buffer's dtype. Keys and shapes must match exactly."""
        missing = [name for name in self.arrays if name not in state]
        unexpected = [name for name in state if name not in self.arrays]
        if missing or unexpected:
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, array in self.arrays.items():
            value = np.asarray(state[name])
            if value.shape != array.shape:
                raise ValueError(
                    f"state dict entry {name!r} has shape {value.shape}, expected {array.shape}"
                )
            array[...] = value.astype(self.dtype, copy=False)
