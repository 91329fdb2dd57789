"""The agent's JSON-RPC methods, and the one place agent errors become wire errors."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Type

from myx import __version__
from myx.agent import sysinfo, upgrade
from myx.agent.config import AgentConfig
from myx.agent.errors import (
    AgentError,
    BusyError,
    ConflictError,
    InvalidInputError,
    UnknownCommandError,
)
from myx.agent.runner import Command, CommandSpec, Runner
from myx.agent.tls import TlsFiles
from myx.protocol import errors as wire
from myx.protocol.dispatch import Dispatcher
from myx.protocol.methods import (
    CommandIdParams,
    ExecuteCommandParams,
    ExecuteScriptParams,
    GetCommandLogParams,
    HeartbeatParams,
    ListCommandsParams,
    NoParams,
    UpdateCertificateParams,
    UpgradeAgentParams,
)

log = logging.getLogger(__name__)

STATUS_TIMEOUT = 10.0

_WIRE_ERRORS: Dict[Type[AgentError], Type[wire.RpcError]] = {
    UnknownCommandError: wire.UnknownTarget,
    BusyError: wire.Busy,
    ConflictError: wire.Conflict,
    InvalidInputError: wire.InvalidParams,
}


def to_wire(exc: AgentError) -> wire.RpcError:
    """Map an agent error onto its JSON-RPC error (unmapped ones are internal errors)."""
    for cls, target in _WIRE_ERRORS.items():
        if isinstance(exc, cls):
            return target(str(exc))
    return wire.InternalError(str(exc))


@dataclass
class CallContext:
    """Who is calling: the transport, the peer address and, on a WebSocket, how to push output."""

    transport: str
    peer: str
    subscribe: Optional[Callable[[Command], None]] = None
    after_reply: List[Callable[[], None]] = field(default_factory=list)


Handler = Callable[[CallContext, Any], Awaitable[Any]]


def _mapped(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(ctx: CallContext, params: Any) -> Any:
        try:
            return await handler(ctx, params)
        except AgentError as exc:
            raise to_wire(exc) from exc

    return wrapper


def _check_text(name: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidInputError(f"{name!r} must not contain NUL characters")


class AgentRpc:
    """Binds the method table to this agent's runner and host information."""

    def __init__(self, config: AgentConfig, runner: Runner, tls: Optional[TlsFiles] = None) -> None:
        self.config = config
        self.runner = runner
        self.tls = tls or TlsFiles(config.certificate_path, config.private_key_path)
        self.started = time.monotonic()
        self.sampler = sysinfo.CpuSampler()
        self.dispatcher: Dispatcher[CallContext] = Dispatcher(on_internal_error=self._internal_error)
        handlers: Dict[str, Handler] = {
            "health_check": self.health_check,
            "heartbeat": self.heartbeat,
            "get_status": self.get_status,
            "get_port": self.get_port,
            "execute_command": self.execute_command,
            "execute_script": self.execute_script,
            "get_command_log": self.get_command_log,
            "cancel_command": self.cancel_command,
            "list_commands": self.list_commands,
            "update_certificate": self.update_certificate,
            "upgrade_agent": self.upgrade_agent,
        }
        for name, handler in handlers.items():
            self.dispatcher.add(name, _mapped(handler))

    @staticmethod
    def _internal_error(method: str, exc: BaseException) -> None:
        log.error("internal error in method=%s error=%r", method, exc, exc_info=exc)

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)

    async def health_check(self, ctx: CallContext, p: NoParams) -> Dict[str, Any]:
        return {"status": "ok", "version": __version__, "uptime": self.uptime()}

    async def heartbeat(self, ctx: CallContext, p: HeartbeatParams) -> Dict[str, Any]:
        return {
            "status": "ok",
            "agent_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": __version__,
            "uptime": self.uptime(),
            "running_commands": self.runner.running_count(),
        }

    async def get_port(self, ctx: CallContext, p: NoParams) -> Dict[str, Any]:
        return {"rpc_port": self.config.rpc_port}

    async def get_status(self, ctx: CallContext, p: NoParams) -> Dict[str, Any]:
        # statvfs on a dead network mount can block: never let it block the event loop.
        loop = asyncio.get_running_loop()
        try:
            host = await asyncio.wait_for(
                loop.run_in_executor(None, sysinfo.collect_status, self.sampler), STATUS_TIMEOUT
            )
        except asyncio.TimeoutError:
            raise wire.InternalError(
                f"collecting host status took longer than {STATUS_TIMEOUT:g} s"
            ) from None
        running = [c.id for c in self.runner.commands.values() if not c.finished]
        return {
            "agent_id": self.config.agent_id,
            "version": __version__,
            "mode": self.config.mode,
            **host,
            "uptime": self.uptime(),
            "running_commands": len(running),
            "running_command_ids": running,
            "max_concurrent_commands": self.runner.max_concurrent,
            "pty_sessions": 0,
            "last_upgrade": upgrade.last_result(self.config.state_dir),
        }

    async def execute_command(self, ctx: CallContext, p: ExecuteCommandParams) -> Dict[str, Any]:
        # With shell, the command string is the script and args become $1..: never concatenated.
        argv = ["/bin/sh", "-c", p.command, "sh", *p.args] if p.shell else [p.command, *p.args]
        spec = CommandSpec(
            argv=argv,
            timeout=p.timeout,
            env=p.env,
            cwd=p.cwd,
            stdin=p.stdin.encode("utf-8") if p.stdin is not None else None,
            kind="shell" if p.shell else "command",
        )
        return await self._start(ctx, spec, p.command_id)

    async def execute_script(self, ctx: CallContext, p: ExecuteScriptParams) -> Dict[str, Any]:
        spec = CommandSpec(
            argv=[p.interpreter, *p.args],
            timeout=p.timeout,
            env=p.env,
            cwd=p.cwd,
            kind="script",
            script=p.script,
        )
        return await self._start(ctx, spec, p.command_id)

    async def _start(self, ctx: CallContext, spec: CommandSpec, command_id: Optional[str]) -> Dict[str, Any]:
        for i, arg in enumerate(spec.argv):
            _check_text(f"args[{i}]" if i else "command", arg)
        for key, value in (spec.env or {}).items():
            if not key or "=" in key:
                raise InvalidInputError(f"env key {key!r} is not a valid variable name")
            _check_text(f"env.{key}", value)
        if spec.cwd is not None:
            _check_text("cwd", spec.cwd)
        command = await self.runner.start_command(spec, command_id)
        if ctx.subscribe is not None:
            subscribe = ctx.subscribe
            ctx.after_reply.append(lambda: subscribe(command))
        return {"status": command.status, "command_id": command.id}

    async def get_command_log(self, ctx: CallContext, p: GetCommandLogParams) -> Dict[str, Any]:
        command = self.runner.get(p.command_id)
        if p.wait > 0 and p.offset >= command.log.size:
            await command.wait_changed(p.wait)
        chunks = command.read(p.offset, p.limit)
        new_offset = chunks[-1].end if chunks else p.offset
        wire_chunks = [c.to_wire() for c in chunks]
        streams = {c.stream for c in chunks}
        is_final = command.is_final_at(new_offset)
        return {
            "command_id": command.id,
            "status": command.status,
            "chunks": wire_chunks,
            # seed 001 fields, for clients that only want text
            "log_data": b"".join(c.data for c in chunks).decode("utf-8", "replace"),
            "log_type": streams.pop() if len(streams) == 1 else ("mixed" if streams else ""),
            "offset": p.offset,
            "new_offset": new_offset,
            "is_final": is_final,
            "result": command.result() if is_final else None,
        }

    async def cancel_command(self, ctx: CallContext, p: CommandIdParams) -> Dict[str, Any]:
        cancelled = self.runner.cancel(p.command_id)
        command = self.runner.get(p.command_id)
        return {"command_id": command.id, "cancelled": cancelled, "status": command.status}

    async def list_commands(self, ctx: CallContext, p: ListCommandsParams) -> Dict[str, Any]:
        commands = sorted(self.runner.commands.values(), key=lambda c: c.started_at)
        return {"commands": [c.summary() for c in commands if p.include_finished or not c.finished]}

    async def update_certificate(self, ctx: CallContext, p: UpdateCertificateParams) -> Dict[str, Any]:
        return {"status": "ok", "fingerprint": self.tls.replace(p.cert, p.key)}

    async def upgrade_agent(self, ctx: CallContext, p: UpgradeAgentParams) -> Dict[str, Any]:
        running = self.runner.running_count()
        if running and not p.force:
            raise BusyError(f"{running} commands are running; retry later or pass force=true")
        try:
            data = base64.b64decode(p.data, validate=True)
        except ValueError:
            raise InvalidInputError("'data' is not base64") from None
        marker = upgrade.stage(self.config.state_dir, data, p.sha256, p.version, p.health_deadline)
        upgrade.start_watchdog(self.config.path, marker)
        # Reply first, then stop: the service manager starts the new file.
        asyncio.get_running_loop().call_later(0.5, os.kill, os.getpid(), signal.SIGTERM)
        log.info("upgrading from=%s to=%s", marker["from_version"], marker["to_version"])
        return {"status": "restarting", "from_version": marker["from_version"], "to_version": p.version}
