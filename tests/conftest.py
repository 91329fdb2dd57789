from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# tests/support is shared with bench/; make it importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent))


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/myx-agent.pyz as scripts/test.sh built it ($MYX_AGENT_PYZ); built here when a test runs alone."""
    built = Path(os.environ.get("MYX_AGENT_PYZ", ROOT / "dist" / "myx-agent.pyz"))
    if not built.exists():
        built = tmp_path_factory.mktemp("pyz") / "myx-agent.pyz"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "build_agent_pyz.py"), "--out", str(built)], check=True
        )
    return built
