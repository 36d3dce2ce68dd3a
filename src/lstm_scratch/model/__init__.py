"""The models: the backend choice, the LSTM stack, the character model and its generation
stepper, the text and its vocabulary, batches, and memory estimates. Imports ``reference`` and
``fast``."""
