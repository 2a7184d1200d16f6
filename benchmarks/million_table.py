"""Child process of benchmarks.million: load a store's key table and print RSS per key."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.million import measure_table

if __name__ == "__main__":
    measure_table(Path(sys.argv[1]))
