"""Agents dying, the control server restarting mid-command, batches with a failing host."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable

from support.serverproc import ServerProcess

PY = sys.executable


def test_killed_agent_goes_offline_and_its_command_is_lost_with_a_reason(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().setup().start()
    server.add_host("victim")
    agent = server.start_agent("victim")
    server.wait_status("victim", "online")
    created = server.ok(
        server.api.post("/api/commands", json={"host": "victim", "command": "sleep", "args": ["300"]})
    )
    server.wait_command(created["id"], "running")
    agent.kill()
    # heartbeats every 0.3-0.6 s, retries 0.1/0.2/0.4 s: offline well within 15 s
    host = server.wait_status("victim", "offline", timeout=15)
    assert host["agent"]["last_error"]
    final = server.ok(server.api.get(f"/api/commands/{created['id']}", params={"wait": 15}))
    assert final["status"] == "lost"
    assert "offline" in final["status_reason"]
    events = server.ok(server.api.get("/api/hosts/victim/events"))
    assert events[0]["new_status"] == "offline"


def test_control_server_restart_mid_command_loses_and_duplicates_nothing(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().setup().start()
    server.add_host("steady")
    server.start_agent("steady")
    server.wait_status("steady", "online")
    # ~3 s of numbered lines: the server is killed in the middle of it
    script = (
        "import sys,time\n"
        "for i in range(600):\n"
        "    print(f'line {i:05d} ' + 'x' * 200, flush=True)\n"
        "    time.sleep(0.005)\n"
    )
    expected = "".join(f"line {i:05d} " + "x" * 200 + "\n" for i in range(600)).encode()
    created = server.ok(
        server.api.post("/api/commands", json={"host": "steady", "command": PY, "args": ["-c", script]})
    )
    deadline = time.monotonic() + 10
    while len(server.output(created["id"])) < 20000:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.kill()
    time.sleep(1.0)
    server.start()
    final = server.ok(server.api.get(f"/api/commands/{created['id']}", params={"wait": 60}))
    assert final["status"] == "success", final
    stored = server.output(created["id"])
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert final["output_bytes"] == len(expected)


def test_batch_over_ten_agents_with_one_failing_host(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server().setup().start()
    names = [f"node{i:02d}" for i in range(10)]
    for name in names:
        server.add_host(name, labels={"tier": "batch"})
        agent = server.start_agent(name)
        if name == "node07":
            (agent.folder / "state" / "broken").parent.mkdir(parents=True, exist_ok=True)
            (agent.folder / "state" / "broken").write_text("")
    for name in names:
        server.wait_status(name, "online")
    # Each agent runs in its own folder; the command fails only where the marker exists.
    body = {
        "target": ["tier=batch"],
        "command": 'test ! -e "$PWD/state/broken" && echo fine',
        "shell": True,
        "max_concurrency": 4,
    }
    created = server.ok(server.api.post("/api/batches", json=body))
    batch = server.ok(server.api.get(f"/api/batches/{created['id']}", params={"wait": 120}))
    assert batch["total"] == 10
    by_host = {c["host"]: c for c in batch["commands"]}
    failed = sorted(h for h, c in by_host.items() if c["status"] != "success")
    assert failed == ["node07"], batch
    assert by_host["node07"]["exit_code"] == 1
    assert batch["counts"] == {"success": 9, "failed": 1}
    assert batch["status"] == "failed"
    assert server.output(by_host["node00"]["id"]) == b"fine\n"


def test_batch_stops_when_failures_pass_the_threshold(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server().setup().start()
    names = [f"roll{i}" for i in range(4)]
    for name in names:
        server.add_host(name, labels={"tier": "roll"})
        server.start_agent(name)
    for name in names:
        server.wait_status(name, "online")
    body = {
        "target": "tier=roll",
        "command": "false",
        "batch_size": 2,
        "max_concurrency": 2,
        "max_failures": 0,
    }
    created = server.ok(server.api.post("/api/batches", json=body))
    batch = server.ok(server.api.get(f"/api/batches/{created['id']}", params={"wait": 60}))
    assert batch["status"] == "stopped"
    assert "more than the allowed 0" in batch["status_reason"]
    assert batch["counts"] == {"failed": 2, "cancelled": 2}
    cancelled = [c for c in batch["commands"] if c["status"] == "cancelled"]
    assert all("stopped" in c["status_reason"] for c in cancelled)


def test_agent_refusing_our_token_is_offline_at_once(make_server: Callable[..., ServerProcess]) -> None:
    # Retries wait 2, 4 and 8 s here: a 401 that were retried would take 14 s to mark the agent
    # offline. A connection refused while the agent still starts is retried (after 2 s), the 401
    # after it is not.
    server = make_server(MYX_AGENT_RPC_RETRY_BASE_DELAY="2").setup().start()
    server.add_host("stranger")
    server.start_agent("stranger", agent_token="a-token-the-server-does-not-know-000000")
    host = server.wait_status("stranger", "offline", timeout=12)
    assert "token" in host["agent"]["last_error"]


def test_command_the_agent_forgot_is_lost_with_a_reason(make_server: Callable[..., ServerProcess]) -> None:
    import shutil

    server = make_server().setup().start()
    server.add_host("amnesiac")
    agent = server.start_agent("amnesiac")
    server.wait_status("amnesiac", "online")
    created = server.ok(
        server.api.post("/api/commands", json={"host": "amnesiac", "command": "sleep", "args": ["300"]})
    )
    server.wait_command(created["id"], "running")
    agent.kill()
    shutil.rmtree(agent.folder / "state")  # the host was rebuilt: the agent's spool is gone
    agent.start()
    final = server.ok(server.api.get(f"/api/commands/{created['id']}", params={"wait": 30}))
    assert final["status"] == "lost"
    assert "no longer knows" in final["status_reason"]
