"""scripts/install_ansible.sh: Ansible for the playbooks an agent runs on its own host.

The real script, with pip against the package index this machine uses, into a virtualenv under
tmp_path; the ansible-playbook it prints then runs the tool's ping.yml on this host. Its refusals
(unknown argument, a Python that does not exist or is too old) are checked without installing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from myx.deployment_tool import TOOL_DIR

SCRIPT = Path(TOOL_DIR) / "scripts" / "install_ansible.sh"


def _run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_refuses_an_unknown_argument() -> None:
    proc = _run("--system")
    assert proc.returncode == 1
    assert "unknown argument: --system" in proc.stderr


def test_refuses_a_missing_python() -> None:
    proc = _run(PYTHON="/nonexistent/python3")
    assert proc.returncode == 1
    assert "/nonexistent/python3 not found" in proc.stderr


def test_refuses_a_python_older_than_3_9(tmp_path: Path) -> None:
    fake = tmp_path / "python3.8"
    fake.write_text("#!/bin/sh\necho 3.8\n")  # answers the version probe like Python 3.8 would
    fake.chmod(0o755)
    proc = _run(PYTHON=str(fake))
    assert proc.returncode == 1
    assert "Python >= 3.9 is required, found 3.8" in proc.stderr


@pytest.mark.slow
def test_installs_ansible_into_a_venv_that_runs_a_playbook(tmp_path: Path) -> None:
    venv = tmp_path / "ansible-venv"
    proc = _run(timeout=600, PYTHON=sys.executable, MYX_ANSIBLE_VENV=str(venv))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    playbook = Path(lines[-1])
    assert playbook == venv / "bin" / "ansible-playbook"
    assert "ansible-playbook [core 2.19." in lines[-2]
    assert (venv / "bin" / "ansible-runner").exists()
    ping = subprocess.run(
        [str(playbook), "-i", "localhost,", "-c", "local", str(Path(TOOL_DIR) / "playbooks" / "ping.yml")],
        env={**os.environ, "ANSIBLE_CONFIG": str(Path(TOOL_DIR) / "ansible.cfg")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "failed=0" in ping.stdout
    # A second run finds the venv and only checks the packages.
    again = _run(timeout=600, PYTHON=sys.executable, MYX_ANSIBLE_VENV=str(venv))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(playbook)
