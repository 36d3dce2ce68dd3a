"""On top: the command line, the loss plots, and PyTorch interop. Imports any floor below."""
