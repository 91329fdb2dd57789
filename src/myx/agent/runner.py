"""Running commands: one process group each, output spooled, results kept across restarts.

The runner owns every command's lifecycle: spawn (argv, never a shell unless asked), stream
stdout/stderr into the command's :class:`OutputLog`, enforce the timeout and the output cap,
kill the whole process tree on timeout/cancel/shutdown, and persist the final result so a
control server that reconnects later, or after an agent restart, reads exactly what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, cast

from myx.agent import proctree
from myx.agent.errors import BusyError, ConflictError, InvalidInputError, UnknownCommandError
from myx.agent.outputlog import OutputLog
from myx.protocol.output import OutputChunk, utf8_safe_end

log = logging.getLogger(__name__)

RUNNING = "running"
SUCCESS, FAILED, TIMEOUT, CANCELLED = "success", "failed", "timeout", "cancelled"
RESULT_TAIL_BYTES = 64 << 10
# After the main process exits, descendants that kept stdout/stderr open get this long to finish.
PIPE_DRAIN_SECONDS = 2.0
META_FILE, RESULT_FILE, SCRIPT_FILE = "meta.json", "result.json", "script"


@dataclass(frozen=True)
class CommandSpec:
    argv: List[str]
    timeout: float
    env: Optional[Dict[str, str]] = None
    cwd: Optional[str] = None
    stdin: Optional[bytes] = None
    kind: str = "command"
    script: Optional[str] = None

    def fingerprint(self) -> str:
        """Identity of the request, so a retried command id can be told from a reused one."""
        material = json.dumps(
            [self.kind, self.argv, self.timeout, self.env, self.cwd, self.script,
             self.stdin.hex() if self.stdin is not None else None],
            sort_keys=True,
        )  # fmt: skip
        return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class Command:
    """One command: its process while it runs, its spooled output and result afterwards."""

    def __init__(self, command_id: str, directory: str, log_: OutputLog) -> None:
        self.id = command_id
        self.directory = directory
        self.log = log_
        self.kind = "command"
        self.argv0 = ""
        self.fingerprint = ""
        self.timeout = 0.0
        self.status = RUNNING
        self.error: Optional[str] = None
        self.return_code: Optional[int] = None
        self.signal: Optional[str] = None
        self.started_at = time.time()
        self.finished_at: Optional[float] = None
        self.pid: Optional[int] = None
        self._waiters: List[asyncio.Future[None]] = []

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    def read(self, offset: int, limit: int) -> List[OutputChunk]:
        """Output from *offset*, at most *limit* bytes; a character still being written is held back."""
        if offset > self.log.size:
            raise InvalidInputError(f"offset {offset} is past the end of the output ({self.log.size} bytes)")
        chunks = self.log.read(offset, limit)
        if chunks and (not self.finished or chunks[-1].end < self.log.size):
            last = chunks[-1]
            cut = utf8_safe_end(last.data)
            if cut < len(last.data) and (cut > 0 or len(chunks) > 1):
                chunks[-1:] = (
                    [OutputChunk(last.command_id, last.offset, last.stream, last.data[:cut])] if cut else []
                )
            elif cut == 0 and not self.finished and last.end >= self.log.size:
                # Only the first bytes of a character that is still being written: nothing to
                # send yet. (A read cut short by *limit* gets them, or it could never go on.)
                chunks = []
        return chunks

    def is_final_at(self, offset: int) -> bool:
        return self.finished and offset >= self.log.size

    def result(self) -> Optional[Dict[str, Any]]:
        if not self.finished:
            return None
        duration = (self.finished_at or self.started_at) - self.started_at
        return {
            "status": self.status,
            "success": self.status == SUCCESS,
            "return_code": self.return_code,
            "signal": self.signal,
            "error": self.error,
            "stdout": self.log.tail("stdout", RESULT_TAIL_BYTES).decode("utf-8", "replace"),
            "stderr": self.log.tail("stderr", RESULT_TAIL_BYTES).decode("utf-8", "replace"),
            "stdout_bytes": self.log.stream_bytes["stdout"],
            "stderr_bytes": self.log.stream_bytes["stderr"],
            "output_bytes": self.log.size,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration": round(duration, 3),
            "truncated": self.log.truncated,
            "dropped_bytes": self.log.dropped,
        }

    def summary(self) -> Dict[str, Any]:
        return {
            "command_id": self.id,
            "kind": self.kind,
            "command": self.argv0,
            "status": self.status,
            "pid": self.pid,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "return_code": self.return_code,
            "output_bytes": self.log.size,
        }

    async def wait_changed(self, timeout: float) -> None:
        """Return when output arrives or the command finishes, or after *timeout* seconds."""
        if timeout <= 0 or self.finished:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def meta(self) -> Dict[str, Any]:
        return {
            "command_id": self.id,
            "kind": self.kind,
            "command": self.argv0,
            "fingerprint": self.fingerprint,
            "timeout": self.timeout,
            "started_at": self.started_at,
            "pid": self.pid,
            "pid_start": proctree.start_time(self.pid) if self.pid else None,
        }


class _Execution(asyncio.SubprocessProtocol):
    """Drives one running process: output into the log, exit and kill handling."""

    def __init__(self, command: Command, grace: float, on_done: Callable[[Command], None]) -> None:
        self.command = command
        self.grace = grace
        self.on_done = on_done
        self.transport: Optional[asyncio.SubprocessTransport] = None
        self.exited = False
        self.open_pipes = {1, 2}
        self.kill_reason: Optional[str] = None
        self.tree: Set[proctree.Proc] = set()
        self.tree_dead = True
        self._timers: List[asyncio.TimerHandle] = []
        self._loop = asyncio.get_running_loop()

    # asyncio.SubprocessProtocol

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.command.log.append("stdout" if fd == 1 else "stderr", data)
        self.command.notify()

    def pipe_connection_lost(self, fd: int, exc: Optional[Exception]) -> None:
        self.open_pipes.discard(fd)
        self._maybe_finish()

    def process_exited(self) -> None:
        self.exited = True
        if self.kill_reason is not None and not proctree.any_alive(self.tree, self.command.pid or 0):
            self.tree_dead = True
        if self.open_pipes:
            # Descendants still hold the pipes: give them a moment, then stop listening.
            self._later(PIPE_DRAIN_SECONDS, self._stop_draining)
        self._maybe_finish()

    # lifecycle

    def start_timer(self, timeout: float) -> None:
        self._later(timeout, lambda: self.kill(TIMEOUT, f"timed out after {timeout:g} s"))

    def kill(self, reason: str, message: str) -> bool:
        """Terminate the whole tree: SIGTERM now, SIGKILL to whatever is left after the grace period."""
        if self.command.finished or self.kill_reason is not None:
            return False
        self.kill_reason = reason
        self.command.error = message
        pid = self.command.pid or 0
        self.tree = proctree.tree(pid, pid)
        self.tree_dead = False
        proctree.signal_tree(self.tree, pid, proctree.TERM)
        self._later(self.grace, self._kill_hard)
        log.info("command terminating id=%s reason=%s", self.command.id, reason)
        return True

    def _kill_hard(self) -> None:
        pid = self.command.pid or 0
        proctree.signal_tree(self.tree | proctree.tree(pid, pid), pid, proctree.KILL)
        self.tree_dead = True
        self._stop_draining()

    def _stop_draining(self) -> None:
        if self.transport is not None:
            for fd in list(self.open_pipes):
                pipe = self.transport.get_pipe_transport(fd)
                if pipe is not None:
                    pipe.close()
        if not self.exited:
            return
        self.open_pipes.clear()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.command.finished or not self.exited or self.open_pipes:
            return
        if self.kill_reason is not None and not self.tree_dead:
            if not proctree.any_alive(self.tree, self.command.pid or 0):
                self.tree_dead = True
            else:
                return  # _kill_hard finishes the job at the end of the grace period
        for timer in self._timers:
            timer.cancel()
        code = self.transport.get_returncode() if self.transport is not None else None
        if self.transport is not None:
            self.transport.close()
        _settle(self.command, code, self.kill_reason)
        self.on_done(self.command)

    def _later(self, delay: float, callback: Callable[[], Any]) -> None:
        self._timers.append(self._loop.call_later(delay, callback))


def _settle(command: Command, code: Optional[int], kill_reason: Optional[str]) -> None:
    command.return_code = code
    if code is not None and code < 0:
        try:
            command.signal = signal.Signals(-code).name
        except ValueError:
            command.signal = str(-code)
    if kill_reason == "shutdown":
        command.status = FAILED
    elif kill_reason is not None:
        command.status = kill_reason
    else:
        command.status = SUCCESS if code == 0 else FAILED
    command.finished_at = time.time()


class Runner:
    """All commands on this agent, running and finished, keyed by command id."""

    def __init__(
        self,
        state_dir: str,
        max_concurrent: int = 32,
        max_output_bytes: int = 256 << 20,
        retention_seconds: float = 24 * 3600.0,
        kill_grace_seconds: float = 5.0,
    ) -> None:
        self.commands_dir = os.path.join(state_dir, "commands")
        self.max_concurrent = max_concurrent
        self.max_output_bytes = max_output_bytes
        self.retention_seconds = retention_seconds
        self.kill_grace_seconds = kill_grace_seconds
        self.commands: Dict[str, Command] = {}
        self._executions: Dict[str, _Execution] = {}
        self._listeners: List[Callable[[Command], None]] = []
        self._prune_task: Optional[asyncio.Task[None]] = None

    # startup / shutdown

    def load(self) -> None:
        """Restore spooled commands; any that was running when the agent died is closed as failed."""
        os.makedirs(self.commands_dir, mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(self.commands_dir), 0o700)
        for name in sorted(os.listdir(self.commands_dir)):
            directory = os.path.join(self.commands_dir, name)
            try:
                command = self._restore(name, directory)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("discarding unreadable command spool dir=%s error=%s", directory, exc)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self.commands[command.id] = command
        self.prune()
        log.info("restored commands count=%d", len(self.commands))

    def start(self) -> None:
        self._prune_task = asyncio.get_running_loop().create_task(self._prune_forever())

    async def shutdown(self) -> None:
        """Stop every running command (recording why) and wait until their results are written."""
        if self._prune_task is not None:
            self._prune_task.cancel()
        running = [c for c in self.commands.values() if not c.finished]
        for command in running:
            execution = self._executions.get(command.id)
            if execution is not None:
                execution.kill("shutdown", "the agent stopped while the command was running")
        deadline = time.monotonic() + self.kill_grace_seconds + PIPE_DRAIN_SECONDS + 1
        for command in running:
            while not command.finished and time.monotonic() < deadline:
                await command.wait_changed(0.1)

    def add_listener(self, listener: Callable[[Command], None]) -> None:
        """Called once per command when it finishes (e.g. to push a notification)."""
        self._listeners.append(listener)

    # commands

    async def start_command(self, spec: CommandSpec, command_id: Optional[str] = None) -> Command:
        command_id = command_id or uuid.uuid4().hex
        existing = self.commands.get(command_id)
        if existing is not None:
            if existing.fingerprint != spec.fingerprint():
                raise ConflictError(f"command id {command_id!r} is already used by a different command")
            return existing  # a retried request: never run twice
        running = sum(1 for c in self.commands.values() if not c.finished)
        if running >= self.max_concurrent:
            raise BusyError(
                f"{running} commands are running, the limit is {self.max_concurrent}; retry later"
            )
        command = self._new_command(command_id, spec)
        await self._spawn(command, spec)
        return command

    def get(self, command_id: str) -> Command:
        command = self.commands.get(command_id)
        if command is None:
            raise UnknownCommandError(f"unknown command {command_id!r} (never started here, or expired)")
        return command

    def cancel(self, command_id: str) -> bool:
        command = self.get(command_id)
        execution = self._executions.get(command_id)
        if command.finished or execution is None:
            return False
        return execution.kill(CANCELLED, "cancelled")

    def running_count(self) -> int:
        return sum(1 for c in self.commands.values() if not c.finished)

    # internals

    def _new_command(self, command_id: str, spec: CommandSpec) -> Command:
        directory = os.path.join(self.commands_dir, command_id)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, mode=0o700)
        output = OutputLog(directory, command_id, self.max_output_bytes)
        output.open_for_append()
        command = Command(command_id, directory, output)
        command.kind = spec.kind
        command.argv0 = spec.argv[0] if spec.argv else ""
        command.fingerprint = spec.fingerprint()
        command.timeout = spec.timeout
        self.commands[command_id] = command
        return command

    async def _spawn(self, command: Command, spec: CommandSpec) -> None:
        argv = list(spec.argv)
        if spec.script is not None:
            script_path = os.path.join(command.directory, SCRIPT_FILE)
            with open(os.open(script_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700), "w") as fh:
                fh.write(spec.script)
            argv.insert(1, script_path)
        env = dict(os.environ)
        env.update(spec.env or {})
        env["MYX_COMMAND_ID"] = command.id
        execution = _Execution(command, self.kill_grace_seconds, self._finished)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: execution,
                *argv,
                stdin=asyncio.subprocess.PIPE if spec.stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=spec.cwd or None,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self._spawn_failed(command, argv[0], exc)
            return
        execution.transport = transport
        command.pid = transport.get_pid()
        self._executions[command.id] = execution
        self._write_json(command, META_FILE, command.meta())
        log.info("command started id=%s kind=%s pid=%s", command.id, command.kind, command.pid)
        if spec.stdin is not None:
            stdin = cast(Optional[asyncio.WriteTransport], transport.get_pipe_transport(0))
            if stdin is not None:
                stdin.write(spec.stdin)
                stdin.close()
        execution.start_timer(spec.timeout)

    def _spawn_failed(self, command: Command, program: str, exc: OSError) -> None:
        # Shell conventions: 127 when the program is missing, 126 when it cannot be executed.
        where = f" in {exc.filename}" if exc.filename and exc.filename != program else ""
        message = f"myx-agent: cannot run {program!r}{where}: {exc.strerror or exc}\n"
        command.log.append("stderr", message.encode("utf-8", "replace"))
        command.error = message.strip()
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        _settle(command, code, None)
        self._write_json(command, META_FILE, command.meta())
        self._finished(command)

    def _finished(self, command: Command) -> None:
        self._executions.pop(command.id, None)
        command.log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(command.directory, SCRIPT_FILE))
        self._write_json(command, RESULT_FILE, self._persisted_result(command), durable=True)
        log.info(
            "command finished id=%s status=%s return_code=%s output_bytes=%d",
            command.id, command.status, command.return_code, command.log.size,
        )  # fmt: skip
        command.notify()
        for listener in self._listeners:
            listener(command)

    @staticmethod
    def _persisted_result(command: Command) -> Dict[str, Any]:
        return {
            "status": command.status,
            "return_code": command.return_code,
            "signal": command.signal,
            "error": command.error,
            "started_at": command.started_at,
            "finished_at": command.finished_at,
            "dropped_bytes": command.log.dropped,
        }

    @staticmethod
    def _write_json(command: Command, name: str, data: Dict[str, Any], durable: bool = False) -> None:
        # Write-then-rename so a crash never leaves a half-written file behind; only the result is
        # worth an fsync (it must survive a power cut), the meta is rewritten at every start.
        path = os.path.join(command.directory, name)
        tmp = path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            json.dump(data, fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _restore(self, name: str, directory: str) -> Command:
        with open(os.path.join(directory, META_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
        command = Command(name, directory, OutputLog.restore(directory, name, self.max_output_bytes))
        command.kind = meta["kind"]
        command.argv0 = meta["command"]
        command.fingerprint = meta["fingerprint"]
        command.timeout = float(meta["timeout"])
        command.started_at = float(meta["started_at"])
        command.pid = meta.get("pid")
        result_path = os.path.join(directory, RESULT_FILE)
        if os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as fh:
                result = json.load(fh)
            command.status = result["status"]
            command.return_code = result["return_code"]
            command.signal = result.get("signal")
            command.error = result.get("error")
            command.finished_at = result["finished_at"]
            command.log.dropped = int(result.get("dropped_bytes", 0))
            return command
        self._close_orphan(command, meta.get("pid_start"))
        return command

    def _close_orphan(self, command: Command, pid_start: Optional[int]) -> None:
        """A command the previous agent process never finished: stop what is left of it, record why."""
        if command.pid and pid_start is not None and proctree.start_time(command.pid) == pid_start:
            tree = proctree.tree(command.pid, command.pid)
            proctree.signal_tree(tree, command.pid, proctree.KILL)
            log.warning("killed command left running by a previous agent process id=%s", command.id)
        command.status = FAILED
        command.error = "the agent restarted while the command was running; later output was lost"
        command.finished_at = time.time()
        self._write_json(command, RESULT_FILE, self._persisted_result(command), durable=True)

    def prune(self) -> None:
        """Forget finished commands older than the retention period, spool files included."""
        cutoff = time.time() - self.retention_seconds
        for command in list(self.commands.values()):
            if command.finished and (command.finished_at or 0) < cutoff:
                self.commands.pop(command.id, None)
                shutil.rmtree(command.directory, ignore_errors=True)

    async def _prune_forever(self) -> None:
        interval = min(max(self.retention_seconds / 10, 1.0), 600.0)
        while True:
            await asyncio.sleep(interval)
            self.prune()
