"""The agent's JSON-RPC methods, and the one place agent errors become wire errors."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Type

from myx import __version__
from myx.agent import bundles, sysinfo, upgrade
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
    ExecuteAnsibleParams,
    ExecuteCommandParams,
    ExecuteScriptParams,
    GetCommandLogParams,
    HeartbeatParams,
    ListCommandsParams,
    NoParams,
    SyncBundleParams,
    UpdateCertificateParams,
    UpgradeAgentParams,
)

log = logging.getLogger(__name__)

STATUS_TIMEOUT = 10.0
# Larger extra_vars go to a file (-e @file): one argv element may not exceed 128 KiB on Linux.
ANSIBLE_INLINE_VARS_MAX = 64 << 10
ANSIBLE_VARS_DIR = "ansible-vars"
ANSIBLE_INVENTORY = os.path.join("inventory", "localhost.ini")

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
            "sync_bundle": self.sync_bundle,
            "execute_ansible": self.execute_ansible,
            "restart_agent": self.restart_agent,
        }
        for name, handler in handlers.items():
            self.dispatcher.add(name, _mapped(handler))
        self._bundle_syncs = 0
        # extra_vars files of running playbooks, removed when they finish; none can be running yet.
        self._vars_files: Dict[str, str] = {}
        self._vars_dir = os.path.join(config.state_dir, ANSIBLE_VARS_DIR)
        shutil.rmtree(self._vars_dir, ignore_errors=True)
        runner.add_listener(self._remove_vars_file)

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
        if not chunks and p.wait > 0 and not command.finished and p.offset < command.log.size:
            # Part of a character so far (held back): wait for the rest instead of a caller spinning.
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

    async def restart_agent(self, ctx: CallContext, p: NoParams) -> Dict[str, Any]:
        """Stop after replying; systemd (Restart=always) or the supervisor starts the agent again."""
        asyncio.get_running_loop().call_later(0.5, os.kill, os.getpid(), signal.SIGTERM)
        log.info("restart requested")
        return {"status": "restarting", "version": __version__}

    async def sync_bundle(self, ctx: CallContext, p: SyncBundleParams) -> Dict[str, Any]:
        tool_dir = self.config.deployment_tool_dir
        if self._ansible_running() and bundles.installed_sha256(tool_dir) != p.sha256.lower():
            # Swapping the directory would pull the files from under the running playbook.
            raise BusyError("a playbook is running from the deployment tool dir; retry when it has finished")

        def install() -> Dict[str, Any]:
            try:
                data = base64.b64decode(p.data, validate=True)
            except ValueError:
                raise InvalidInputError("'data' is not base64") from None
            return bundles.sync(tool_dir, p.name, p.sha256, data)

        # Decoding, hashing and unpacking up to 256 MiB must not stall every other request.
        self._bundle_syncs += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(None, install)
        finally:
            self._bundle_syncs -= 1

    async def execute_ansible(self, ctx: CallContext, p: ExecuteAnsibleParams) -> Dict[str, Any]:
        if self._bundle_syncs:
            raise BusyError("the deployment tool is being synced; retry when sync_bundle has finished")
        command_id = p.command_id or uuid.uuid4().hex
        spec, vars_file, vars_text = self._ansible_spec(p, command_id)
        # A retried command id starts nothing: its file is already there, or already removed.
        wrote_vars = False
        if vars_file is not None and command_id not in self.runner.commands:
            self._write_vars_file(command_id, vars_file, vars_text)
            wrote_vars = True
        try:
            return await self._start(ctx, spec, command_id)
        except BaseException:
            if wrote_vars:
                self._remove_vars_file_of(command_id)
            raise

    def _ansible_spec(
        self, p: ExecuteAnsibleParams, command_id: str
    ) -> Tuple[CommandSpec, Optional[str], str]:
        """The ansible-playbook command, and the extra_vars file it reads (if the vars need one)."""
        tool_dir = os.path.realpath(self.config.deployment_tool_dir)
        playbook = _confine_playbook(tool_dir, p.playbook)
        inventory = os.path.join(tool_dir, ANSIBLE_INVENTORY)
        argv = [self._ansible_playbook()]
        if os.path.isfile(inventory):
            argv += ["-i", inventory]
        else:
            argv += ["-i", "localhost,", "-c", "local"]
        argv.append(playbook)
        env = {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
        ansible_cfg = os.path.join(tool_dir, "ansible.cfg")
        if os.path.isfile(ansible_cfg):
            env["ANSIBLE_CONFIG"] = ansible_cfg
        vars_file: Optional[str] = None
        text = ""
        if p.extra_vars is not None:
            text = json.dumps(p.extra_vars, sort_keys=True, separators=(",", ":"))
            if len(text) <= ANSIBLE_INLINE_VARS_MAX:
                argv += ["-e", text]
            else:
                # Named after the content too, so a reused command id with other vars is a conflict.
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
                vars_file = os.path.join(self._vars_dir, f"{command_id}-{digest}.json")
                argv += ["-e", "@" + vars_file]
        spec = CommandSpec(argv=argv, timeout=p.timeout, env=env, cwd=tool_dir, kind="ansible")
        return spec, vars_file, text

    def _ansible_running(self) -> bool:
        return any(c.kind == "ansible" and not c.finished for c in self.runner.commands.values())

    def _ansible_playbook(self) -> str:
        found = shutil.which(self.config.ansible_playbook)
        if found is None:
            raise InvalidInputError(
                f"ansible-playbook is not installed on this host ({self.config.ansible_playbook!r} not "
                "found): install ansible-core (scripts/install_ansible.sh in the deployment tool) "
                "or set ansible_playbook in the config"
            )
        return os.path.abspath(found)

    def _write_vars_file(self, command_id: str, path: str, text: str) -> None:
        os.makedirs(self._vars_dir, mode=0o700, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
            fh.write(text)
        self._vars_files[command_id] = path

    def _remove_vars_file(self, command: Command) -> None:
        self._remove_vars_file_of(command.id)

    def _remove_vars_file_of(self, command_id: str) -> None:
        path = self._vars_files.pop(command_id, None)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _confine_playbook(tool_dir: str, playbook: str) -> str:
    """The playbook's real path, which must be a file inside the (real) deployment tool dir."""
    _check_text("playbook", playbook)
    path = os.path.realpath(os.path.join(tool_dir, playbook))
    if path == tool_dir or os.path.commonpath([tool_dir, path]) != tool_dir or not os.path.isfile(path):
        raise InvalidInputError(
            f"playbook {playbook!r}: the playbook must be a file inside the deployment tool dir "
            f"{tool_dir} (synced with sync_bundle)"
        )
    return path
