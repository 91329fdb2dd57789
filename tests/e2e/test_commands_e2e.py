"""End to end: REST API -> control server -> real agents (TLS, mutual auth) -> storage -> REST API."""

from __future__ import annotations

import hashlib
import sys
import time

import pytest

from support.serverproc import ServerProcess

PY = sys.executable


def test_round_trip(server: ServerProcess) -> None:
    done = server.run("web1", "sh", "-c", "echo hello; echo oops >&2; exit 3")
    assert done["status"] == "failed"
    assert done["exit_code"] == 3
    assert done["host"] == "web1"
    assert server.output(done["id"]) == b"hello\noops\n"
    ok = server.run("web2", "echo hi", shell=True)
    assert ok["status"] == "success"
    assert ok["exit_code"] == 0
    assert ok["duration"] is not None


def test_five_megabytes_stored_byte_exact(server: ServerProcess) -> None:
    size = 5 * 1024 * 1024
    script = f"import random,sys; sys.stdout.buffer.write(random.Random(3).randbytes({size}))"
    done = server.run("web1", PY, "-c", script)
    assert done["status"] == "success"
    assert done["output_bytes"] == size
    stored = server.output(done["id"])
    assert (
        hashlib.sha256(stored).hexdigest()
        == hashlib.sha256(__import__("random").Random(3).randbytes(size)).hexdigest()
    )


def test_output_is_visible_before_the_command_ends(server: ServerProcess) -> None:
    created = server.ok(
        server.api.post(
            "/api/commands",
            json={"host": "web2", "command": "sh", "args": ["-c", "echo early; sleep 4; echo late"]},
        )
    )
    deadline = time.monotonic() + 3.5
    seen = b""
    while time.monotonic() < deadline and b"early" not in seen:
        seen = server.output(created["id"])
        time.sleep(0.05)
    assert seen == b"early\n"
    assert server.ok(server.api.get(f"/api/commands/{created['id']}"))["status"] == "running"
    final = server.ok(server.api.get(f"/api/commands/{created['id']}", params={"wait": 30}))
    assert final["status"] == "success"
    assert server.output(created["id"]) == b"early\nlate\n"


def test_stream_endpoint_delivers_output_then_end(server: ServerProcess) -> None:
    created = server.ok(
        server.api.post(
            "/api/commands",
            json={"host": "web1", "command": "sh", "args": ["-c", "echo a; sleep 0.5; echo b"]},
        )
    )
    events = []
    with server.api.stream("GET", f"/api/commands/{created['id']}/stream") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, line[6:]))
                if event == "end":
                    break
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end"
    assert "output" in kinds
    import json

    from myx.protocol.output import chunk_bytes

    data = b"".join(chunk_bytes(c) for e, d in events if e == "output" for c in json.loads(d)["chunks"])
    assert data == b"a\nb\n"


def test_cancel_and_timeout(server: ServerProcess) -> None:
    created = server.ok(
        server.api.post("/api/commands", json={"host": "web1", "command": "sleep", "args": ["300"]})
    )
    server.wait_command(created["id"], "running")
    server.ok(server.api.post(f"/api/commands/{created['id']}/cancel"))
    final = server.ok(server.api.get(f"/api/commands/{created['id']}", params={"wait": 30}))
    assert final["status"] == "cancelled"
    again = server.api.post(f"/api/commands/{created['id']}/cancel")
    assert again.status_code == 409
    timed = server.run("web2", "sleep", "300", timeout=1)
    assert timed["status"] == "timeout"
    assert "timed out" in timed["status_reason"]


def test_command_history_filters_and_pagination(server: ServerProcess) -> None:
    for i in range(3):
        server.run("web2", "echo", f"history-{i}")
    page = server.ok(
        server.api.get("/api/commands", params={"host": "web2", "status": "success", "limit": 2})
    )
    assert page["limit"] == 2
    assert len(page["items"]) == 2
    assert page["total"] >= 3
    assert all(c["host"] == "web2" and c["status"] == "success" for c in page["items"])
    second = server.ok(server.api.get("/api/commands", params={"host": "web2", "limit": 2, "offset": 2}))
    assert {c["id"] for c in second["items"]}.isdisjoint({c["id"] for c in page["items"]})


def test_host_detail_has_status_and_metrics(server: ServerProcess) -> None:
    host = server.host("web1")
    assert host["agent"]["status"] == "online"
    assert host["agent"]["version"]
    assert host["agent"]["last_heartbeat"]
    assert host["metrics"]["memory"]["total"] > 0
    assert "load" in host["metrics"]
    listed = server.ok(server.api.get("/api/hosts", params={"label": "role=web"}))
    assert {h["name"] for h in listed["items"]} >= {"web1", "web2"}
    events = server.ok(server.api.get("/api/hosts/web1/events"))
    assert events[0]["new_status"] == "online"


def test_metrics_endpoint(server: ServerProcess) -> None:
    text = server.api.get("/metrics").text
    assert 'myx_agents{status="online"}' in text
    assert "myx_command_dispatch_seconds_bucket" in text
    assert "myx_heartbeat_seconds_count" in text
    import httpx

    assert httpx.get(f"{server.url}/metrics").status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/commands", {"host": "web1"}),
        ("POST", "/api/commands", {"host": "web1", "command": ""}),
        ("POST", "/api/commands", {"host": "web1", "command": "true", "timeout": -1}),
        ("POST", "/api/commands", {"host": "web1", "command": "true", "timeout": "soon"}),
        ("POST", "/api/commands", {"host": "web1", "command": "true", "args": "not-a-list"}),
        ("POST", "/api/commands", {"host": "web1", "command": "true", "bogus": 1}),
        ("POST", "/api/commands", {"host": "web1", "command": "true", "script": "x"}),
        ("POST", "/api/commands", {"host": "no-such-host", "command": "true"}),
        ("POST", "/api/commands", b"{not json"),
        ("POST", "/api/commands", [1, 2]),
        ("GET", "/api/commands/nope", None),
        ("GET", "/api/commands/nope/output", None),
        ("GET", "/api/commands?status=weird", None),
        ("GET", "/api/commands?limit=-1", None),
        ("POST", "/api/hosts", {"name": "bad name!", "address": "127.0.0.1"}),
        ("POST", "/api/hosts", {"name": "x", "address": ""}),
        ("POST", "/api/hosts", {"name": "x", "address": "127.0.0.1", "rpc_port": 70000}),
        ("POST", "/api/hosts", {"name": "web1", "address": "127.0.0.1"}),
        ("POST", "/api/hosts", {"name": "y", "address": "127.0.0.1", "labels": {"bad key!": "v"}}),
        ("GET", "/api/hosts/does-not-exist", None),
        ("GET", "/api/hosts?label=novalue", None),
        ("POST", "/api/batches", {"target": [], "command": "true"}),
        ("POST", "/api/batches", {"target": ["nobody"], "command": "true"}),
        ("POST", "/api/batches", {"target": ["all"], "command": "true", "max_concurrency": 0}),
        ("GET", "/api/batches/nope", None),
        ("POST", "/api/auth/login", {"username": "admin", "password": "wrong"}),
        ("GET", "/api/nothing-here", None),
    ],
)
def test_bad_input_is_4xx_with_a_message(server: ServerProcess, method: str, path: str, body: object) -> None:
    kwargs: dict[str, object] = {}
    if isinstance(body, bytes):
        kwargs = {"content": body, "headers": {"Content-Type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    resp = server.api.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert 400 <= resp.status_code < 500, resp.text
    error = resp.json()["error"]
    assert error["code"]
    assert error["message"]


def test_output_offset_past_the_end_is_400(server: ServerProcess) -> None:
    done = server.run("web1", "echo", "x")
    resp = server.api.get(f"/api/commands/{done['id']}/output", params={"offset": 999})
    assert resp.status_code == 400


def test_requests_without_a_valid_token_are_401(server: ServerProcess) -> None:
    import httpx

    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer myx_000000000000_x"}):
        resp = httpx.get(f"{server.url}/api/hosts", headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "unauthenticated"


def test_openapi_is_served(server: ServerProcess) -> None:
    spec = server.api.get("/api/openapi.json").json()
    for path in ("/api/hosts", "/api/commands", "/api/commands/{command_id}/output", "/api/batches"):
        assert path in spec["paths"]
