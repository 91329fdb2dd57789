"""Deployment bookkeeping: one deployment per host at a time, and none left running by a crash."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from support.agentproc import free_port
from support.serverproc import ServerProcess

# Any syntactically valid key: the SSH port below refuses connections before a key is offered.
UNUSED_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-used\n-----END OPENSSH PRIVATE KEY-----\n"


def test_a_second_deployment_of_a_busy_host_is_refused(
    make_server: Callable[..., ServerProcess], pyz: Path, tmp_path: Path
) -> None:
    server = make_server(MYX_AGENT_PYZ=str(pyz)).setup().start()
    server.add_host("busy", address="127.0.0.1")
    closed = free_port()  # nothing listens there: the install fails on its own within seconds
    server.ok(
        server.api.put(
            "/api/hosts/busy/ssh", json={"user": "root", "port": closed, "private_key": UNUSED_KEY}
        )
    )
    options = {"install_dir": str(tmp_path / "opt"), "service_manager": "supervisor"}
    first = server.ok(server.api.post("/api/hosts/busy/install", json=options))
    second = server.api.post("/api/hosts/busy/install", json=options)
    assert second.status_code == 409, second.text
    assert "has a deployment running" in second.json()["error"]["message"]
    assert server.api.post("/api/hosts/busy/upgrade", params={"method": "ssh"}).status_code == 409
    deadline = time.monotonic() + 120
    while (done := server.ok(server.api.get(f"/api/deployments/{first['id']}")))["status"] == "running":
        assert time.monotonic() < deadline, "the install against a closed port did not end"
        time.sleep(0.5)
    assert done["status"] == "failed"
    # once it has ended, the host takes deployments again
    again = server.ok(server.api.post("/api/hosts/busy/install", json=options))
    assert again["status"] == "running"


def test_deployments_a_crash_left_running_end_as_failed_at_start(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().setup().start()
    server.add_host("crashed", address="127.0.0.1")
    server.stop()
    # What a killed control server leaves behind: a deployment still marked running.
    with sqlite3.connect(server.workdir / "data" / "myx.db") as db:
        db.execute(
            "INSERT INTO deployments (id, host_id, kind, status, log, created_at) "
            "SELECT 'stale0123', id, 'install', 'running', '[myx] installing\n', created_at "
            "FROM hosts WHERE name = 'crashed'"
        )
    server.start()
    stale = server.ok(server.api.get("/api/deployments/stale0123"))
    assert stale["status"] == "failed"
    assert stale["error"] == "the control server stopped during the deployment"
    assert stale["finished_at"] is not None
