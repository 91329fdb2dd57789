"""Ansible through the agent: the deployment tool is synced (once), then a playbook runs as a command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from support.serverproc import ServerProcess


def test_playbook_via_agent_and_bundle_sync_skipped_the_second_time(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().setup().start()
    server.add_host("ans1")
    agent = server.start_agent("ans1", ansible_playbook=str(Path(sys.executable).parent / "ansible-playbook"),
                               deployment_tool_dir="tool")  # fmt: skip
    server.wait_status("ans1", "online")
    body = {"playbook": "playbooks/ping.yml", "extra_vars": {"who": "the e2e test"}}
    first = server.ok(server.api.post("/api/hosts/ans1/playbooks", json=body))
    assert first["sync"]["status"] == "updated"
    assert (agent.folder / "tool" / "playbooks" / "install_agent.yml").exists()
    done = server.ok(server.api.get(f"/api/commands/{first['command']['id']}", params={"wait": 120}))
    assert done["status"] == "success", server.output(done["id"]).decode()
    assert done["kind"] == "ansible"
    assert b"answers the e2e test" in server.output(done["id"])
    second = server.ok(server.api.post("/api/hosts/ans1/playbooks", json=body))
    assert second["sync"]["status"] == "unchanged"
    assert (
        server.ok(server.api.get(f"/api/commands/{second['command']['id']}", params={"wait": 120}))["status"]
        == "success"
    )
    # a path out of the deployment tool is refused by the agent: the command fails with the reason
    escape = server.ok(server.api.post("/api/hosts/ans1/playbooks", json={"playbook": "../../etc/passwd"}))
    refused = server.ok(server.api.get(f"/api/commands/{escape['command']['id']}", params={"wait": 60}))
    assert refused["status"] == "failed"
    assert "inside the deployment tool" in refused["status_reason"]
