"""AnsibleExecutor, agent method (seed 003): sync the deployment tool, then run a playbook on the host.

The deployment tool travels as a deterministic tar.gz; its sha256 lets the agent skip an
unchanged bundle (seed 003 "future": playbooks hash).  The playbook then runs as an ordinary
command, so its output is stored and streamed like any other.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from myx.server.channels.base import AgentChannel, AgentEndpoint
from myx.server.db.models import Command, Host
from myx.server.errors import InvalidInput
from myx.server.services.commands import CommandRequest, CommandService
from myx.server.services.hosts import HostService

BUNDLE_NAME = "deployment-tool"
_SKIP = ("__pycache__", "__init__.py")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
# Variables an SSH run must not take from a user: connection settings (ansible_ssh_common_args can
# carry a ProxyCommand, run on the control server) and the control server's own myx_* variables.
_RESERVED_PREFIXES = ("ansible_", "myx_")
# Variables that name files on the machine running Ansible (copy: src=...): over SSH that is the
# control server, whose files are not the user's to send anywhere.
_CONTROLLER_FILE_SUFFIXES = ("_src", "_artifact")
_TEMPLATE_MARKERS = ("{{", "{%", "{#")


def confine_playbook(tool_dir: Path, playbook: str) -> Path:
    """The playbook's real path, which must be a .yml file inside the (real) deployment tool dir."""
    root = tool_dir.resolve()
    path = (root / playbook).resolve()
    if not path.is_relative_to(root) or path.suffix not in (".yml", ".yaml") or not path.is_file():
        raise InvalidInput(
            f"playbook {playbook!r}: must be a .yml file inside the deployment tool, e.g. playbooks/ping.yml"
        )
    return path


def check_ssh_extra_vars(extra_vars: dict[str, Any]) -> None:
    """Extra vars for a playbook run on the control server must be plain data (see the constants)."""
    for name in extra_vars:
        if not _VAR_NAME.fullmatch(name):
            raise InvalidInput(f"extra_vars: {name[:80]!r} is not a variable name")
        if name.startswith(_RESERVED_PREFIXES):
            raise InvalidInput(f"extra_vars: {name!r} is reserved (ansible_* and myx_* are set by MyX)")
        if name.endswith(_CONTROLLER_FILE_SUFFIXES):
            raise InvalidInput(
                f"extra_vars: {name!r} names a file on the control server, which SSH runs do not "
                "accept: give a URL instead, or run the playbook through the agent"
            )
    _refuse_templates(extra_vars, "extra_vars")


def _refuse_templates(value: Any, where: str) -> None:
    """Ansible templates variables where it runs: over SSH, a "{{ lookup('pipe', ...) }}" in a value
    would run on the control server."""
    if isinstance(value, str):
        if any(marker in value for marker in _TEMPLATE_MARKERS):
            raise InvalidInput(
                f"{where}: templates ({{{{ }}}}, {{% %}}, {{# #}}) are not accepted in SSH runs"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_templates(str(key), where)
            _refuse_templates(item, f"{where}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _refuse_templates(item, f"{where}[{n}]")


def tool_bundle(tool_dir: Path) -> tuple[bytes, str]:
    """The deployment tool as tar.gz, byte-identical for identical files (sorted, no timestamps)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        for path in sorted(tool_dir.rglob("*")):
            rel = path.relative_to(tool_dir)
            if any(part in _SKIP or part.endswith(".pyc") for part in rel.parts) or not path.is_file():
                continue
            info = tarfile.TarInfo(rel.as_posix())
            info.size = path.stat().st_size
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.mtime = 0
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    # gzip stores a timestamp too: zero it so the hash depends on content only.
    data = bytearray(buf.getvalue())
    data[4:8] = b"\0\0\0\0"
    return bytes(data), hashlib.sha256(data).hexdigest()


class AnsibleExecutor:
    def __init__(
        self,
        hosts: HostService,
        commands: CommandService,
        channel_for: Callable[[AgentEndpoint], AgentChannel],
        tool_dir: Path,
    ) -> None:
        self.hosts = hosts
        self.commands = commands
        self.channel_for = channel_for
        self.tool_dir = tool_dir
        self._bundle: tuple[bytes, str] | None = None

    def bundle(self) -> tuple[bytes, str]:
        if self._bundle is None:
            self._bundle = tool_bundle(self.tool_dir)
        return self._bundle

    async def sync(self, host: Host) -> dict[str, Any]:
        data, sha256 = self.bundle()
        channel = self.channel_for(self.hosts.endpoint(host))
        params = {"name": BUNDLE_NAME, "sha256": sha256, "data": base64.b64encode(data).decode("ascii")}
        reply: dict[str, Any] = await channel.call("sync_bundle", params, timeout=120)
        return reply

    async def run_playbook(
        self,
        host: Host,
        playbook: str,
        extra_vars: dict[str, Any] | None,
        timeout: float,
        user_id: int | None,
    ) -> tuple[dict[str, Any], Command]:
        synced = await self.sync(host)
        request = CommandRequest(command=playbook, playbook=True, extra_vars=extra_vars, timeout=timeout)
        return synced, await self.commands.create(host, request, user_id)
