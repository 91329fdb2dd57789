"""The HTTPS surface: which paths exist, authentication, body limits, throttling."""

from __future__ import annotations

import json
import ssl
import time

import httpx
import pytest

from support.agentproc import RPC_PATH, TOKEN, AgentProcess, RpcFailure

UNKNOWN_PATHS = [
    "/",
    "/rpc",
    "/health",
    f"/{RPC_PATH}",
    f"/{RPC_PATH}/",
    f"/{RPC_PATH}/rpcx",
    "/x/rpc",
    "/../rpc",
]


def _health() -> dict[str, object]:
    return {"jsonrpc": "2.0", "method": "health_check", "id": 1}


@pytest.mark.parametrize("token", [TOKEN, "wrong", None])
def test_unknown_paths_are_identical_404_before_the_token_check(
    agent: AgentProcess, token: str | None
) -> None:
    bodies = set()
    for path in UNKNOWN_PATHS:
        for method in ("GET", "POST"):
            headers = {"X-Agent-Token": token} if token else {}
            resp = agent.client.request(method, agent.base_url + path, headers=headers, content=b"{}")
            assert resp.status_code == 404, path
            bodies.add(resp.content)
    assert len(bodies) == 1


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], TOKEN + "x"])
def test_missing_or_wrong_token_is_401_with_jsonrpc_error(agent: AgentProcess, token: str | None) -> None:
    resp = agent.post(_health(), token=token)
    assert resp.status_code == 401
    body = resp.json()
    assert body["error"]["code"] == -32001
    assert body["id"] is None


def test_health_check_and_heartbeat(agent: AgentProcess) -> None:
    health = agent.call("health_check")
    assert health["status"] == "ok"
    assert health["version"]
    assert health["uptime"] >= 0
    beat = agent.call("heartbeat", server_time="2026-01-01T00:00:00Z")
    assert beat["status"] == "ok"
    assert beat["agent_time"].endswith("Z")
    assert agent.call("get_port") == {"rpc_port": agent.config["rpc_port"]}


def test_get_status_reports_the_host(agent: AgentProcess) -> None:
    status = agent.call("get_status")
    for key in (
        "agent_id",
        "version",
        "mode",
        "hostname",
        "os",
        "kernel",
        "arch",
        "python",
        "uptime",
        "load",
    ):
        assert key in status
    assert status["agent_id"] == "test-agent"
    assert status["mode"] == "listen"
    assert status["memory"]["total"] > 0
    assert isinstance(status["disks"], list)
    assert status["running_commands"] >= 0
    assert status["pty_sessions"] == 0


def test_notification_gets_204_and_batch_gets_array(agent: AgentProcess) -> None:
    resp = agent.post({"jsonrpc": "2.0", "method": "health_check"})
    assert resp.status_code == 204
    assert resp.content == b""
    batch = [
        _health(),
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
        {"jsonrpc": "2.0", "method": "get_port"},
    ]
    replies = agent.post(batch).json()
    assert sorted(r["id"] for r in replies) == [1, 2]


def test_parse_error_and_invalid_params_are_http_200(agent: AgentProcess) -> None:
    resp = agent.post(b"{not json")
    assert resp.status_code == 200
    assert resp.json()["error"]["code"] == -32700
    resp = agent.post({"jsonrpc": "2.0", "method": "execute_command", "params": {"command": 5}, "id": 3})
    error = resp.json()["error"]
    assert error["code"] == -32602
    assert "'command'" in error["message"]


def test_get_is_405(agent: AgentProcess) -> None:
    resp = agent.client.get(agent.url, headers={"X-Agent-Token": TOKEN})
    assert resp.status_code == 405


def test_body_over_the_limit_is_413(make_agent) -> None:  # type: ignore[no-untyped-def]
    small = make_agent(max_request_bytes=4096)
    big = {"jsonrpc": "2.0", "method": "health_check", "params": {"pad": "x" * 5000}, "id": 1}
    assert small.post(big).status_code == 413
    # chunked upload without a Content-Length is cut off too
    resp = small.client.post(
        small.url, content=iter([b"[" + b" " * 3000, b" " * 3000 + b"]"]), headers={"X-Agent-Token": TOKEN}
    )
    assert resp.status_code == 413
    assert small.call("health_check")["status"] == "ok"


def test_repeated_auth_failures_are_slowed_down_then_a_good_token_works(make_agent) -> None:  # type: ignore[no-untyped-def]
    proc = make_agent()
    for _ in range(5):
        assert proc.post(_health(), token="bad").status_code == 401
    started = time.monotonic()
    assert proc.post(_health(), token="bad").status_code == 401
    assert time.monotonic() - started >= 0.4  # a lower bound only: slower machines pass too
    assert proc.call("health_check")["status"] == "ok"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_is_verified_and_old_protocols_are_refused(agent: AgentProcess) -> None:
    # Without the agent's certificate as a trust anchor the handshake must fail: nothing here
    # (nor anywhere in MyX) disables verification.
    with httpx.Client(verify=ssl.create_default_context()) as client, pytest.raises(httpx.ConnectError):
        client.post(agent.url, content=json.dumps(_health()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(agent.cafile))
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with httpx.Client(verify=ctx) as client, pytest.raises(httpx.ConnectError):
        client.post(agent.url, content=json.dumps(_health()))


def test_tokens_and_command_environment_never_reach_the_log(make_agent) -> None:  # type: ignore[no-untyped-def]
    proc = make_agent()
    proc.post(_health(), token="guessed-token-value")
    proc.run("true", env={"DB_PASSWORD": "hunter2-secret"})
    proc.stop()
    log = proc.log_path.read_text()
    assert "command finished" in log  # the log does record events
    for secret in (TOKEN, "guessed-token-value", "hunter2-secret"):
        assert secret not in log


def test_update_certificate_hot_swaps_and_rejects_a_mismatched_pair(make_agent, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    proc = make_agent()
    pairs = []
    for name in ("a", "b"):
        key, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", "/CN=rotated", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(crt)],
            check=True, capture_output=True,
        )  # fmt: skip
        pairs.append((crt.read_text(), key.read_text()))
    with pytest.raises(RpcFailure) as info:
        proc.call("update_certificate", cert=pairs[0][0], key=pairs[1][1])
    assert info.value.code == -32602
    with pytest.raises(RpcFailure):
        proc.call("update_certificate", cert="not a certificate", key=pairs[0][1])
    reply = proc.call("update_certificate", cert=pairs[0][0], key=pairs[0][1])
    assert reply["status"] == "ok"
    # the test client trusted the old certificate file, which now holds the new one
    proc.reset_client()
    assert proc.call("health_check")["status"] == "ok"
    assert (proc.workdir / "ssl" / "agent.key").stat().st_mode & 0o777 == 0o600
