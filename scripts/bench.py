#!/usr/bin/env python3
"""Run the benchmark harness (tests/bench/) and print the table of figures.

Usage: scripts/bench.py [--only SECTION ...] [--runs N] [--repeats N] ...
Run it with the Python of the environment the engine is installed in, for
example `.venv/bin/python scripts/bench.py`; `--help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bench.main import main

if __name__ == "__main__":
    sys.exit(main())
