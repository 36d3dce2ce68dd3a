"""The reference: an LSTM's math in plain NumPy, the code a learner reads (ops, the cell and
its time loop, initialisation, the flat parameter buffer). Imports nothing else of the package."""
