"""Training and using a model: the configuration, the loop, run folders, optimizers, checkpoints,
MPI, evaluation, sampling and loading. Imports ``model`` and the floors below it."""
