"""``lstm-scratch bench``: lstm-scratch against PyTorch, each measurement in its own process.
Outside the core import path: only the ``bench`` command imports it."""
