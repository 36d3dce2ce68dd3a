"""The same benchmark as ``lstm-scratch bench`` (``lstm_scratch/bench/harness.py``), as a script:

env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py --json bench.json
"""

import sys

from lstm_scratch.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
