"""The SQL functions' tests run a real gateway and worker through the gateway tests' harness."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "gateway"))
