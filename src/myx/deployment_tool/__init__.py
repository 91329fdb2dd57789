"""The deployment tool: Ansible playbooks, helper scripts, inventory and ``ansible.cfg``.

Shipped as package data of the control server, which runs ``playbooks/install_agent.yml`` and
``playbooks/uninstall_agent.yml`` over SSH with ansible-runner (``ANSIBLE_CONFIG`` pointing at
``TOOL_DIR / "ansible.cfg"``). The same folder is synced to agents as ``/opt/myx-deployment-tool``
(seed 001 §3.1 step 12), so it holds data only: nothing here is imported by the control server
except these two constants.
"""

from __future__ import annotations

from pathlib import Path

TOOL_DIR: Path = Path(__file__).resolve().parent
VERSION: str = (TOOL_DIR / "VERSION").read_text(encoding="utf-8").strip()

__all__ = ["TOOL_DIR", "VERSION"]
