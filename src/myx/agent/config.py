"""Loading and validating ``/etc/myx-agent/config.json``.

Every problem is collected and reported at once, each on one line that says what to change:
an operator fixing a config over SSH should not have to restart the agent once per mistake.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from myx.agent.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/myx-agent/config.json"
CONFIG_ENV = "MYX_AGENT_CONFIG"
RPC_PATH_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,128}")
MODES = ("listen",)

# key -> (accepted JSON types, description used in error messages)
_SCHEMA: Dict[str, Tuple[Tuple[type, ...], str]] = {
    "agent_id": ((str,), "a string"),
    "agent_token": ((str,), "a string"),
    "secret_key": ((str,), "a string"),
    "mode": ((str,), '"listen"'),
    "rpc_port": ((int,), "an integer port (1-65535)"),
    "rpc_path": ((str,), "a string"),
    "bind_address": ((str,), "a string"),
    "certificate_path": ((str,), "a file path"),
    "private_key_path": ((str,), "a file path"),
    "client_ca_path": ((str,), "a file path"),
    "server_url": ((str,), "a URL"),
    "server_ca_path": ((str,), "a file path"),
    "deployment_tool_dir": ((str,), "a directory path"),
    "ansible_playbook": ((str,), "a command name (looked up in PATH) or a path to ansible-playbook"),
    "state_dir": ((str,), "a directory path"),
    "max_concurrent_commands": ((int,), "a positive integer"),
    "max_output_bytes": ((int,), "a positive integer"),
    "max_request_bytes": ((int,), "a positive integer"),
    "result_retention_seconds": ((int, float), "a number of seconds"),
    "kill_grace_seconds": ((int, float), "a number of seconds"),
    "log_level": ((str,), '"debug", "info", "warning" or "error"'),
}
_PATH_KEYS = (
    "certificate_path",
    "private_key_path",
    "client_ca_path",
    "server_ca_path",
    "deployment_tool_dir",
    "state_dir",
)
_POSITIVE_KEYS = ("max_concurrent_commands", "max_output_bytes", "max_request_bytes")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class AgentConfig:
    path: str
    agent_token: str
    rpc_port: int
    rpc_path: str
    mode: str = "listen"
    agent_id: Optional[str] = None
    secret_key: Optional[str] = None
    bind_address: str = "0.0.0.0"  # noqa: S104 - an agent in listen mode is dialled from the network
    certificate_path: str = "/etc/myx-agent/ssl/agent.crt"
    private_key_path: str = "/etc/myx-agent/ssl/agent.key"
    client_ca_path: Optional[str] = None
    server_url: Optional[str] = None
    server_ca_path: Optional[str] = None
    deployment_tool_dir: str = "/opt/myx-deployment-tool"
    ansible_playbook: str = "ansible-playbook"
    state_dir: str = "/var/lib/myx-agent"
    max_concurrent_commands: int = 32
    max_output_bytes: int = 256 << 20
    max_request_bytes: int = 64 << 20
    result_retention_seconds: float = 24 * 3600.0
    kill_grace_seconds: float = 5.0
    log_level: str = "info"
    warnings: List[str] = field(default_factory=list)


def config_path(cli_value: Optional[str]) -> str:
    return cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str) -> AgentConfig:
    """Read, check and resolve the config at *path*; raise :class:`ConfigError` listing every problem."""
    raw = _read(path)
    problems: List[str] = []
    warnings = [f"{path}: unknown key {key!r} ignored" for key in sorted(set(raw) - set(_SCHEMA))]
    values: Dict[str, Any] = {}
    for key, (types, desc) in _SCHEMA.items():
        if key not in raw or raw[key] is None:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"{path}: {key!r} must be {desc}, got {json.dumps(value)[:60]}")
            continue
        values[key] = value
    problems.extend(_check_values(path, values))
    if problems:
        raise ConfigError(problems)
    base = os.path.dirname(os.path.abspath(path))
    for key in _PATH_KEYS:
        if key in values:
            values[key] = os.path.normpath(os.path.join(base, os.path.expanduser(values[key])))
    # A bare command name is looked up in PATH when a playbook runs; only a path is resolved here.
    program = values.get("ansible_playbook")
    if program is not None and "/" in os.path.expanduser(program):
        values["ansible_playbook"] = os.path.normpath(os.path.join(base, os.path.expanduser(program)))
    values["result_retention_seconds"] = float(values.get("result_retention_seconds", 24 * 3600.0))
    values["kill_grace_seconds"] = float(values.get("kill_grace_seconds", 5.0))
    return AgentConfig(path=os.path.abspath(path), warnings=warnings, **values)


def _read(path: str) -> Dict[str, Any]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found (set --config or {CONFIG_ENV})"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror}"]) from None
    problem = insecure_mode_problem(path, st)
    if problem:
        raise ConfigError([problem])
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not valid JSON: the file is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the config must be a JSON object"])
    return raw


def insecure_mode_problem(path: str, st: Optional[os.stat_result] = None) -> Optional[str]:
    """Like ssh: a secret readable by group or others is refused, with the fix spelled out."""
    st = st or os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            f"{path}: permissions {mode:04o} are too open; the file holds secrets and must be "
            f"readable by its owner only: run 'chmod 600 {path}'"
        )
    return None


def _check_values(path: str, values: Dict[str, Any]) -> List[str]:
    problems = []
    mode = values.get("mode", "listen")
    if mode == "connect":
        problems.append(f'{path}: \'mode\' "connect" is not supported by this agent version; use "listen"')
    elif mode not in MODES:
        problems.append(f"{path}: 'mode' must be \"listen\", got {json.dumps(mode)}")
    if not values.get("agent_token"):
        problems.append(f"{path}: 'agent_token' is missing; it is assigned by the control server")
    if mode == "listen":
        problems.extend(_check_listen(path, values))
    for key in _POSITIVE_KEYS:
        if key in values and values[key] < 1:
            problems.append(f"{path}: {key!r} must be a positive integer, got {values[key]}")
    for key in ("result_retention_seconds", "kill_grace_seconds"):
        if key in values and values[key] < 0:
            problems.append(f"{path}: {key!r} must not be negative, got {values[key]}")
    if "ansible_playbook" in values and not values["ansible_playbook"].strip():
        problems.append(f"{path}: 'ansible_playbook' must not be empty (leave it out for PATH lookup)")
    if "log_level" in values and values["log_level"] not in _LOG_LEVELS:
        problems.append(f"{path}: 'log_level' must be one of {', '.join(_LOG_LEVELS)}")
    return problems


def _check_listen(path: str, values: Dict[str, Any]) -> List[str]:
    problems = []
    if "rpc_port" not in values:
        problems.append(
            f"{path}: 'rpc_port' is missing; in listen mode the control server assigns it "
            "(re-create the config with 'myx hosts bundle' or reinstall the agent)"
        )
    elif not 1 <= values["rpc_port"] <= 65535:
        problems.append(f"{path}: 'rpc_port' must be between 1 and 65535, got {values['rpc_port']}")
    if "rpc_path" not in values:
        problems.append(
            f"{path}: 'rpc_path' is missing; in listen mode the control server assigns it "
            "(re-create the config with 'myx hosts bundle' or reinstall the agent)"
        )
    elif not RPC_PATH_PATTERN.fullmatch(values["rpc_path"]):
        problems.append(f"{path}: 'rpc_path' must be 8-128 characters of A-Z, a-z, 0-9, '_' or '-'")
    return problems
