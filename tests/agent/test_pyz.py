"""The shipped artifact: dist/myx-agent.pyz runs with an isolated interpreter and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support.agentproc import AgentProcess

COMPILED = (".so", ".pyd", ".dylib")


def _interpreters() -> list[str]:
    """This interpreter, plus the oldest supported one (3.9) when the machine has it."""
    found = [sys.executable]
    candidates = [shutil.which("python3.9"), *sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))]
    for path in filter(None, candidates):
        if subprocess.run([str(path), "-c", "pass"], capture_output=True, check=False).returncode == 0:
            found.append(str(path))
            break
    return found


def test_no_compiled_code_inside(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
    assert "__main__.py" in names
    assert "myx/agent/main.py" in names
    assert "myx/protocol/jsonrpc.py" in names
    assert not [n for n in names if n.endswith(COMPILED)]
    assert not [n for n in names if n.startswith("myx/server") or n.startswith("myx/cli")]


@pytest.mark.parametrize("python", _interpreters())
def test_runs_isolated_and_serves_rpc(pyz: Path, python: str, tmp_path: Path) -> None:
    version = subprocess.run([python, "-I", str(pyz), "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("myx-agent ")
    agent = AgentProcess(tmp_path / "a", command=[python, "-I", str(pyz)])
    agent.start()
    try:
        assert agent.call("health_check")["status"] == "ok"
        reply = agent.run("sh", "-c", "echo from-pyz")
        assert reply["stdout"] == b"from-pyz\n"
        status = agent.call("get_status")
        assert (
            status["python"]
            == subprocess.run(
                [python, "-c", "import platform; print(platform.python_version())"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    finally:
        agent.stop()
