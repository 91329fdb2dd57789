"""The agent's method table: typed params for every JSON-RPC method and notification.

Both sides use these classes: the agent binds received params with
:func:`myx.protocol.params.bind`, the control server builds requests from the same types so a
renamed parameter fails type checking instead of on the wire.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Type, Union

from myx.protocol.params import constrained

# A command id names a spool directory on the agent, so it is restricted to a safe alphabet.
COMMAND_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
MAX_TIMEOUT = 7 * 24 * 3600.0
DEFAULT_TIMEOUT = 300.0
DEFAULT_LOG_LIMIT = 1 << 20
MAX_LOG_LIMIT = 16 << 20
MAX_LOG_WAIT = 60.0
# A bundle name becomes a directory name on the agent.
BUNDLE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
DEFAULT_ANSIBLE_TIMEOUT = 1800.0


def _str_list() -> List[str]:
    return []


@dataclass(frozen=True)
class NoParams:
    pass


@dataclass(frozen=True)
class HeartbeatParams:
    server_time: Optional[Union[str, float]] = None


@dataclass(frozen=True)
class ExecuteCommandParams:
    command: str = constrained(max_len=65536, nonempty=True)
    args: List[str] = constrained(factory=_str_list, max_len=65536)
    timeout: float = constrained(DEFAULT_TIMEOUT, min=0.001, max=MAX_TIMEOUT)
    command_id: Optional[str] = constrained(None, pattern=COMMAND_ID_PATTERN)
    env: Optional[Dict[str, str]] = None
    cwd: Optional[str] = None
    stdin: Optional[str] = None
    shell: bool = False


@dataclass(frozen=True)
class ExecuteScriptParams:
    script: str = constrained(max_len=4 << 20)
    interpreter: str = constrained("/bin/sh", nonempty=True)
    args: List[str] = constrained(factory=_str_list, max_len=65536)
    timeout: float = constrained(DEFAULT_TIMEOUT, min=0.001, max=MAX_TIMEOUT)
    command_id: Optional[str] = constrained(None, pattern=COMMAND_ID_PATTERN)
    env: Optional[Dict[str, str]] = None
    cwd: Optional[str] = None


@dataclass(frozen=True)
class GetCommandLogParams:
    command_id: str = constrained(pattern=COMMAND_ID_PATTERN)
    offset: int = constrained(0, min=0)
    wait: float = constrained(0.0, min=0.0, max=MAX_LOG_WAIT)
    limit: int = constrained(DEFAULT_LOG_LIMIT, min=1, max=MAX_LOG_LIMIT)


@dataclass(frozen=True)
class CommandIdParams:
    command_id: str = constrained(pattern=COMMAND_ID_PATTERN)


@dataclass(frozen=True)
class UpdateCertificateParams:
    cert: str = constrained(max_len=64 << 10, nonempty=True)
    key: str = constrained(max_len=64 << 10, nonempty=True)


@dataclass(frozen=True)
class UpgradeAgentParams:
    version: str = constrained(max_len=64, nonempty=True)
    sha256: str = constrained(pattern=r"[0-9a-fA-F]{64}")
    data: str = constrained(max_len=64 << 20, nonempty=True)  # base64 of the new myx-agent.pyz
    health_deadline: float = constrained(60.0, min=5.0, max=3600.0)
    force: bool = False


@dataclass(frozen=True)
class SyncBundleParams:
    name: str = constrained(pattern=BUNDLE_NAME_PATTERN)
    sha256: str = constrained(pattern=r"[0-9a-fA-F]{64}")
    data: str = constrained(max_len=64 << 20, nonempty=True)  # base64 of a .tar.gz


@dataclass(frozen=True)
class ExecuteAnsibleParams:
    playbook: str = constrained(max_len=1024, nonempty=True)  # relative to the deployment tool dir
    extra_vars: Optional[Dict[str, Any]] = None
    timeout: float = constrained(DEFAULT_ANSIBLE_TIMEOUT, min=0.001, max=MAX_TIMEOUT)
    command_id: Optional[str] = constrained(None, pattern=COMMAND_ID_PATTERN)


@dataclass(frozen=True)
class ListCommandsParams:
    include_finished: bool = True


# Notifications the agent pushes over a WebSocket.


@dataclass(frozen=True)
class CommandOutputParams:
    command_id: str
    offset: int
    new_offset: int
    chunks: List[Dict[str, Any]]


@dataclass(frozen=True)
class CommandFinishedParams:
    command_id: str
    new_offset: int
    result: Dict[str, Any]


METHODS: Dict[str, Type[Any]] = {
    "health_check": NoParams,
    "heartbeat": HeartbeatParams,
    "get_status": NoParams,
    "get_port": NoParams,
    "execute_command": ExecuteCommandParams,
    "execute_script": ExecuteScriptParams,
    "get_command_log": GetCommandLogParams,
    "cancel_command": CommandIdParams,
    "list_commands": ListCommandsParams,
    "update_certificate": UpdateCertificateParams,
    "upgrade_agent": UpgradeAgentParams,
    "sync_bundle": SyncBundleParams,
    "execute_ansible": ExecuteAnsibleParams,
    "restart_agent": NoParams,
}

NOTIFICATIONS: Dict[str, Type[Any]] = {
    "command_output": CommandOutputParams,
    "command_finished": CommandFinishedParams,
}


def as_params(obj: Any) -> Dict[str, Any]:
    """The by-name params of a params dataclass, leaving out what equals its default."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        out[f.name] = value
    return out
