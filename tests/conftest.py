from __future__ import annotations

import sys
from pathlib import Path

# tests/support is shared with bench/; make it importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
