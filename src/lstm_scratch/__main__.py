"""``python -m lstm_scratch``: the command line."""

import sys

from lstm_scratch.app.cli import main

sys.exit(main())
