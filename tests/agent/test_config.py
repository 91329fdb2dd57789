"""Every way a config can be wrong is refused with a line that says what to fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.agentproc import RPC_PATH, TOKEN, AgentProcess, free_port

BASE: dict[str, Any] = {
    "agent_token": TOKEN,
    "rpc_port": 0,
    "rpc_path": RPC_PATH,
    "bind_address": "127.0.0.1",
    "certificate_path": "ssl/agent.crt",
    "private_key_path": "ssl/agent.key",
    "state_dir": "state",
}


def _agent(tmp_path: Path, command: str, config: Any, mode: int = 0o600) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    path.chmod(mode)
    return subprocess.run(
        [sys.executable, "-m", "myx.agent.main", command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _config(**changes: Any) -> dict[str, Any]:
    config = {**BASE, "rpc_port": free_port(), **changes}
    return {k: v for k, v in config.items() if v is not None}


@pytest.mark.parametrize("missing", ["rpc_port", "rpc_path"])
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_listen_mode_without_port_or_path_refuses_with_one_line(
    tmp_path: Path, missing: str, command: str
) -> None:
    proc = _agent(tmp_path, command, _config(**{missing: None}))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"'{missing}' is missing" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_config_readable_by_others_is_refused_with_the_fix(tmp_path: Path, command: str) -> None:
    proc = _agent(tmp_path, command, _config(), mode=0o644)
    assert proc.returncode == 2
    assert "chmod 600" in proc.stderr
    assert "0644" in proc.stderr


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "a")
    agent.start()
    agent.stop()
    agent.workdir.joinpath("ssl", "agent.key").chmod(0o640)
    for command in ("check-config", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "myx.agent.main", command, "--config", str(agent.config_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, command
        assert "agent.key" in proc.stderr
        assert "chmod 600" in proc.stderr


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({**BASE, "rpc_port": "8443"}), "'rpc_port' must be an integer"),
        (json.dumps({**BASE, "rpc_port": True}), "'rpc_port' must be an integer"),
        (json.dumps({**BASE, "rpc_port": 70000}), "between 1 and 65535"),
        (json.dumps({**BASE, "rpc_path": "a/b"}), "'rpc_path' must be"),
        (json.dumps({**BASE, "max_output_bytes": -1}), "'max_output_bytes' must be a positive integer"),
        (json.dumps({**BASE, "kill_grace_seconds": "soon"}), "'kill_grace_seconds' must be a number"),
        (json.dumps({**BASE, "mode": "connect"}), "not supported"),
        (json.dumps({**BASE, "mode": "push"}), "'mode' must be"),
        (json.dumps({**BASE, "agent_token": ""}), "'agent_token' is missing"),
        (json.dumps({**BASE, "log_level": "loud"}), "'log_level' must be one of"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, config: str, expected: str) -> None:
    proc = _agent(tmp_path, "check-config", config)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    proc = _agent(tmp_path, "check-config", {"agent_token": 5, "rpc_port": "x"})
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 3  # agent_token type, rpc_port type, rpc_path missing
    assert any("agent_token" in line for line in lines)
    assert any("rpc_path" in line for line in lines)


def test_missing_config_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "myx.agent.main", "run", "--config", str(tmp_path / "nope.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr


def test_unknown_keys_are_warned_not_fatal(tmp_path: Path) -> None:
    proc = _agent(tmp_path, "check-config", _config(web_service_port=8443))
    assert proc.returncode == 0, proc.stderr
    assert "unknown key 'web_service_port'" in proc.stderr
    assert "config OK" in proc.stdout


def test_config_from_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "env.json"
    path.write_text(json.dumps(_config()))
    path.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "myx.agent.main", "check-config"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"MYX_AGENT_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_relative_paths_resolve_against_the_config_folder_and_key_is_generated_private(
    tmp_path: Path,
) -> None:
    agent = AgentProcess(tmp_path / "a")
    agent.start()
    try:
        key = agent.workdir / "ssl" / "agent.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert (agent.workdir / "state" / "commands").is_dir()
    finally:
        agent.stop()


def test_port_in_use_fails_clearly(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        agent = AgentProcess(tmp_path / "a", rpc_port=port)
        agent.write_config()
        proc = subprocess.run(
            [sys.executable, "-m", "myx.agent.main", "run", "--config", str(agent.config_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert proc.returncode != 0
    assert "address already in use" in proc.stderr.lower()
