"""AnsibleExecutor, agent method (seed 003): sync the deployment tool, then run a playbook on the host.

The deployment tool travels as a deterministic tar.gz; its sha256 lets the agent skip an
unchanged bundle (seed 003 "future": playbooks hash).  The playbook then runs as an ordinary
command, so its output is stored and streamed like any other.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from myx.server.channels.base import AgentChannel, AgentEndpoint
from myx.server.db.models import Command, Host
from myx.server.services.commands import CommandRequest, CommandService
from myx.server.services.hosts import HostService

BUNDLE_NAME = "deployment-tool"
_SKIP = ("__pycache__", "__init__.py")


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
