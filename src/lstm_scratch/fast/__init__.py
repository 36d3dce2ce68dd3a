"""The compiled path: numba kernels for the layer's time loop, its GEMM, the lanes that share a
step between threads, and the process settings they need (``host``). Held to ``reference`` by
the tests; imports ``reference`` and ``errors`` only."""
