"""Training-step throughput (chars/s) of one CharLM configuration: for choosing backends, threads.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/step_throughput.py \
        --hidden 128 --batch 32 --seq-len 64 --threads 1 --backend numba

Times forward + backward (no optimizer) for a few seconds in this process; run each setting in its
own process and repeat, since single runs on a shared 2-core machine are noisy.
"""

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from lstm_scratch.model.charlm import CharLM, ModelConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", default="auto")
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    model = CharLM(ModelConfig(a.vocab, a.hidden, 1, 0, dtype="float32"), backend=a.backend)
    rng = np.random.default_rng(0)
    inputs, targets = (rng.integers(0, a.vocab, (a.seq_len, a.batch)) for _ in range(2))
    with threadpool_limits(a.threads, user_api="blas"):
        model.loss_and_grads(inputs, targets)  # compile / warm up
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < a.seconds:
            model.loss_and_grads(inputs, targets)
            steps += 1
        rate = steps * a.batch * a.seq_len / (time.perf_counter() - start)
        info = threadpool_info()
        blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in info]
    print(f"H{a.hidden} B{a.batch} T{a.seq_len} {a.backend} {blas}: {rate:,.0f} chars/s")


if __name__ == "__main__":
    main()
