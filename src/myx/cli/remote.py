"""CLI commands that talk to the control server's REST API (never to the database).

``myx.cli.main`` wires these in with :func:`register`; ``myx run`` needs :class:`RunCommand` and
:data:`RUN_CONTEXT_SETTINGS` so that words after ``--`` reach the remote command untouched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import socket
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, BinaryIO
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from myx.cli.client import (
    ApiClient,
    ClientConfig,
    CliError,
    ServerUnreachable,
    StreamBroken,
    resolve_config,
    save_login,
)
from myx.protocol.output import chunk_bytes

FINAL_STATES = frozenset({"success", "failed", "timeout", "cancelled", "lost"})
# Exit statuses of `myx run` for commands that did not exit by themselves (timeout(1), shell, ssh).
EXIT_FOR_STATUS = {"timeout": 124, "cancelled": 130, "lost": 255}
EXIT_BATCH_STOPPED = 2
STREAM_RETRIES = 5
MAX_PARTIAL_LINE = 64 << 10
MAX_BUNDLE_BYTES = 16 << 20
SUMMARY_ROWS = 50
SECRET_FILES = frozenset({"config.json", "agent.key"})

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Control server URL (default: $MYX_SERVER_URL, then the `myx login` file).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", help="API token (default: $MYX_TOKEN, then the `myx login` file).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def connect(server: str | None, token: str | None) -> ApiClient:
    return ApiClient(resolve_config(server, token))


def ref(value: str | int) -> str:
    """A host or command reference as one URL path segment."""
    return quote(str(value), safe="")


def print_json(value: Any) -> None:
    # Plain text, not rich: machine-readable output must not carry colour codes or wrapping.
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def out_console() -> Console:
    return Console(highlight=False)


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def parse_labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"label {item!r} must look like key=value")
        labels[key.strip()] = value.strip()
    return labels


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # The API stores UTC; a value without an offset is UTC too.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_age(value: Any, now: datetime | None = None) -> str:
    when = parse_time(value)
    if when is None:
        return "never" if value is None else str(value)
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    if seconds < 0:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def human_bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"  # pragma: no cover - loop always returns


STATUS_STYLES = {
    "online": "green",
    "success": "green",
    "offline": "red",
    "failed": "red",
    "lost": "red",
    "timeout": "yellow",
    "cancelled": "yellow",
    "stopped": "yellow",
    "running": "cyan",
    "pending": "dim",
    "unknown": "dim",
}


def styled_status(status: Any) -> Text:
    text = str(status)
    return Text(text, style=STATUS_STYLES.get(text, ""))


def command_line(command: dict[str, Any]) -> str:
    kind = command.get("kind")
    if kind == "shell":
        return str(command.get("command", ""))
    if kind == "script":
        return f"script ({command.get('command', '')})"
    return shlex.join([str(command.get("command", "")), *map(str, command.get("args") or [])])


# login


def login(
    server: ServerOpt = None,
    username: Annotated[str | None, typer.Option("--username", "-u", help="User name.")] = None,
    password: Annotated[
        str | None, typer.Option("--password", help="Password (asked for, hidden, when missing).")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="CA certificate (PEM) that signs the control server's TLS.")
    ] = None,
) -> None:
    """Log in to a control server and remember its URL and an API token."""
    resolved = resolve_config(server, None)
    ca_file = str(ca.expanduser().resolve()) if ca is not None else resolved.ca_file
    if username is None:
        username = typer.prompt("username")
    if password is None:
        password = typer.prompt("password", hide_input=True)
    cfg = ClientConfig(resolved.server_url, None, ca_file)
    # The token is named after this machine so `myx token` listings say where it is used.
    token_name = f"myx-cli@{socket.gethostname()}"[:128]
    with ApiClient(cfg, require_token=False) as api:
        answer = api.post(
            "/api/auth/login", json={"username": username, "password": password, "token_name": token_name}
        )
    cfg.token = str(answer["token"])
    path = save_login(cfg)
    typer.echo(f"logged in to {cfg.server_url} as {answer.get('username', username)} (token saved in {path})")


# hosts

hosts_app = typer.Typer(help="Add, list, inspect and remove managed hosts.", no_args_is_help=True)


@hosts_app.command("add")
def hosts_add(
    name: Annotated[str, typer.Argument(help="Unique host name.")],
    address: Annotated[str, typer.Argument(help="DNS name or IP address the control server dials.")],
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Label key=value (repeatable).")
    ] = None,
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    rpc_port: Annotated[
        int | None, typer.Option("--rpc-port", min=1, max=65535, help="Agent port (assigned when omitted).")
    ] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Register a host; then install its agent with `myx hosts bundle` or `myx hosts install`."""
    body: dict[str, Any] = {"name": name, "address": address, "labels": parse_labels(label or [])}
    if description:
        body["description"] = description
    if rpc_port is not None:
        body["rpc_port"] = rpc_port
    with connect(server, token) as api:
        host = api.post("/api/hosts", json=body)
    if json_out:
        print_json(host)
        return
    typer.echo(f"added host {host['name']} (id {host['id']}, rpc_port {host['agent']['rpc_port']})")
    typer.echo(f"next: myx hosts bundle {host['name']} --out DIR   (or: myx hosts install {host['name']})")


def list_all_hosts(api: ApiClient, labels: list[str], status: str | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"label": labels, "limit": 1000, "offset": len(items)}
        if status:
            params["status"] = status
        page = api.get("/api/hosts", params=params)
        items.extend(page["items"])
        if not page["items"] or len(items) >= page["total"]:
            return items


def hosts_table(hosts: list[dict[str, Any]]) -> Table:
    table = Table("id", "name", "address", "status", "version", "last heartbeat", "labels", box=None)
    for host in hosts:
        agent = host.get("agent") or {}
        labels = ",".join(f"{k}={v}" for k, v in sorted((host.get("labels") or {}).items()))
        table.add_row(
            str(host["id"]),
            Text(str(host["name"])),
            Text(str(host["address"])),
            styled_status(agent.get("status", "unknown")),
            Text(str(agent.get("version") or "-")),
            human_age(agent.get("last_heartbeat")),
            Text(labels),
        )
    return table


@hosts_app.command("list")
def hosts_list(
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Only hosts with key=value.")
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Only hosts in this state: online, offline, unknown.")
    ] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """List hosts with their agent status."""
    labels = list(label or [])
    parse_labels(labels)  # a typo is reported here, before the request
    with connect(server, token) as api:
        hosts = list_all_hosts(api, labels, status)
    if json_out:
        print_json(hosts)
    elif not hosts:
        err_console().print("no hosts (add one with `myx hosts add NAME ADDRESS`)")
    else:
        out_console().print(hosts_table(hosts))


def host_details(host: dict[str, Any]) -> Table:
    agent = host.get("agent") or {}
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")

    def row(key: str, value: Any) -> None:
        grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))

    row("id", host["id"])
    row("name", host["name"])
    row("address", host["address"])
    if host.get("description"):
        row("description", host["description"])
    row("labels", ", ".join(f"{k}={v}" for k, v in sorted((host.get("labels") or {}).items())) or "-")
    row("created", host.get("created_at", "-"))
    row("status", styled_status(agent.get("status", "unknown")))
    row("mode", agent.get("mode", "-"))
    row("version", agent.get("version") or "-")
    row("rpc port", agent.get("rpc_port", "-"))
    row("last heartbeat", human_age(agent.get("last_heartbeat")))
    if agent.get("consecutive_failures"):
        row("failures", agent["consecutive_failures"])
    row("last error", agent.get("last_error") or "-")
    row("needs reinstall", "yes" if agent.get("needs_reinstall") else "no")
    if agent.get("cert_fingerprint"):
        row("certificate", f"{agent['cert_fingerprint']} (until {agent.get('cert_not_after') or '?'})")
    for key, value in metrics_rows(host.get("metrics"), host.get("metrics_at")):
        row(key, value)
    return grid


def metrics_rows(metrics: Any, metrics_at: Any) -> list[tuple[str, str]]:
    """The host's last status snapshot as (label, value) rows; what the agent could not read is left out."""
    if not isinstance(metrics, dict):
        return [("metrics", "none yet")]
    rows = [("metrics from", human_age(metrics_at))]
    os_info = metrics["os"] if isinstance(metrics.get("os"), dict) else {}
    if os_info.get("pretty_name") or metrics.get("kernel"):
        rows.append(("os", f"{os_info.get('pretty_name') or '?'} ({metrics.get('kernel') or '?'})"))
    load = metrics.get("load")
    if isinstance(load, list) and load:
        rows.append(("load", " ".join(f"{v:.2f}" for v in load if isinstance(v, int | float))))
    if isinstance(metrics.get("cpu_percent"), int | float):
        rows.append(("cpu", f"{metrics['cpu_percent']:.1f} % of {metrics.get('cpu_count') or '?'} CPUs"))
    memory = metrics.get("memory")
    if isinstance(memory, dict):
        used, total = human_bytes(memory.get("used")), human_bytes(memory.get("total"))
        rows.append(("memory", f"{memory.get('percent', '?')} % ({used} of {total})"))
    for disk in metrics.get("disks") or []:
        if isinstance(disk, dict):
            used, total = human_bytes(disk.get("used")), human_bytes(disk.get("total"))
            rows.append(
                (f"disk {disk.get('mount', '?')}", f"{disk.get('percent', '?')} % ({used} of {total})")
            )
    return rows


@hosts_app.command("show")
def hosts_show(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    json_out: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show one host: agent state, last error and its latest metrics."""
    with connect(server, token) as api:
        data = api.get(f"/api/hosts/{ref(host)}")
    if json_out:
        print_json(data)
    else:
        out_console().print(host_details(data))


@hosts_app.command("rm")
def hosts_rm(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Remove a host (its agent keeps running until uninstalled)."""
    with connect(server, token) as api:
        data = api.get(f"/api/hosts/{ref(host)}")
        if not yes:
            typer.confirm(f"remove host {data['name']} ({data['address']})?", abort=True)
        api.delete(f"/api/hosts/{ref(data['id'])}")
    typer.echo(f"removed host {data['name']}")


@hosts_app.command("bundle")
def hosts_bundle(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write config.json and ssl/ into.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write an agent's config.json and fresh TLS files for a manual install."""
    with connect(server, token) as api:
        data = api.download(f"/api/hosts/{ref(host)}/bundle")
    written = extract_bundle(data, out)
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(
        f"next: copy {out} and myx-agent.pyz to the host, then run: "
        f"python3 myx-agent.pyz run --config {out / 'config.json'}"
    )


def extract_bundle(data: bytes, dest: Path) -> list[Path]:
    """Unpack a bundle tar.gz into *dest*, refusing anything that could land outside it.

    Everything is checked before the first byte is written, so a hostile archive writes nothing.
    """
    members = bundle_members(data)
    if not dest.exists():
        dest.mkdir(mode=0o700, parents=True)
    elif not dest.is_dir():
        raise CliError(f"{dest} exists and is not a directory")
    root = dest.resolve()
    written: list[Path] = []
    for rel, member, content in members:
        target = root.joinpath(*rel.parts)
        if member.isdir():
            _make_dir(root, target)
            continue
        _make_dir(root, target.parent)
        _write_file(target, content, bundle_mode(rel, member.mode))
        written.append(dest.joinpath(*rel.parts))
    return written


def bundle_members(data: bytes) -> list[tuple[PurePosixPath, tarfile.TarInfo, bytes]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            return read_members(tar)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise CliError(f"the bundle is not a valid tar.gz: {exc}") from exc


def read_members(tar: tarfile.TarFile) -> list[tuple[PurePosixPath, tarfile.TarInfo, bytes]]:
    members: list[tuple[PurePosixPath, tarfile.TarInfo, bytes]] = []
    total = 0
    for member in tar:
        rel = safe_member_path(member.name)
        if not (member.isfile() or member.isdir()):
            raise CliError(f"refusing bundle entry {member.name!r}: not a regular file or directory")
        content = b""
        if member.isfile():
            total += member.size
            if total > MAX_BUNDLE_BYTES:
                raise CliError("refusing bundle: larger than expected")
            f = tar.extractfile(member)
            content = f.read() if f is not None else b""
        members.append((rel, member, content))
    return members


def safe_member_path(name: str) -> PurePosixPath:
    """*name* as a relative path with no ``..``; anything else is refused."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or name.startswith(("/", "\\")) or ":" in path.parts[0]:
        raise CliError(f"refusing bundle entry {name!r}: absolute path")
    parts = [p for p in path.parts if p != "."]
    if not parts or any(p == ".." or "\\" in p for p in parts):
        raise CliError(f"refusing bundle entry {name!r}: path leaves the output directory")
    return PurePosixPath(*parts)


def bundle_mode(rel: PurePosixPath, mode: int) -> int:
    # Keys and the config (agent token, secret) stay owner-only whatever the archive says; the
    # agent refuses to start when they are readable by others. No set-id bits, no group/other write.
    if rel.name in SECRET_FILES or rel.suffix == ".key":
        return 0o600
    return (mode & 0o755) | 0o600


def _make_dir(root: Path, path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A symlink already in the tree could point elsewhere: the real location must stay under root.
    real = path.resolve()
    if real != root and root not in real.parents:
        raise CliError(f"refusing to write into {path}: it leads outside {root}")


def _write_file(target: Path, content: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, mode)
        # rename replaces a symlink at the target itself, never the file it points to.
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# output


def _stdout() -> BinaryIO:
    sys.stdout.flush()
    return sys.stdout.buffer


def _stderr() -> BinaryIO:
    sys.stderr.flush()
    return sys.stderr.buffer


class OutputWriter:
    """Writes one command's output pages to stdout/stderr once each, whatever pages repeat."""

    def __init__(self, out: BinaryIO, err: BinaryIO, offset: int = 0) -> None:
        self.out, self.err, self.offset = out, err, offset

    def page(self, page: dict[str, Any]) -> None:
        touched: set[int] = set()
        for stream, data in new_bytes(page, self):
            target = self.err if stream == "stderr" else self.out
            target.write(data)
            touched.add(id(target))
        for target in (self.out, self.err):
            if id(target) in touched:
                target.flush()


def new_bytes(page: dict[str, Any], cursor: OutputWriter | LineState) -> Iterator[tuple[str, bytes]]:
    """The (stream, bytes) of *page* past ``cursor.offset``, advancing it.

    After a reconnect the server sends again what we may already have: offsets in the combined
    output tell what is new, so nothing is printed twice.
    """
    for chunk in page.get("chunks") or []:
        data = chunk_bytes(chunk)
        start = int(chunk.get("offset", cursor.offset))
        end = start + len(data)
        if end <= cursor.offset:
            continue
        if start < cursor.offset:
            data = data[cursor.offset - start :]
        cursor.offset = end
        yield str(chunk.get("stream", "stdout")), data


class LineState:
    """Where one batch command's output stands: next offset and its unfinished lines per stream."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.offset = 0
        self.partial: dict[str, bytes] = {}


class LinePrefixer:
    """Prefixes every output line of a batch with its host, keeping hosts' lines apart.

    Output arrives in arbitrary pieces; a piece without a newline is held back per command and
    stream until its line is complete, so a prefix only ever lands at the start of a line.
    """

    def __init__(self, out: BinaryIO, err: BinaryIO) -> None:
        self.out, self.err = out, err
        self.states: dict[str, LineState] = {}

    def add(self, key: str, prefix: str) -> LineState:
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = LineState(prefix.encode("utf-8", "replace"))
        return state

    def page(self, key: str, page: dict[str, Any]) -> None:
        state = self.add(key, f"{key} | ")
        for stream, data in new_bytes(page, state):
            self.write(state, stream, data)

    def write(self, state: LineState, stream: str, data: bytes) -> None:
        target = self.err if stream == "stderr" else self.out
        *lines, rest = (state.partial.pop(stream, b"") + data).split(b"\n")
        if len(rest) > MAX_PARTIAL_LINE:
            # Output that never ends a line (progress bars, binary) must not grow without bound.
            lines.append(rest)
            rest = b""
        if lines:
            target.write(b"".join(state.prefix + line + b"\n" for line in lines))
            target.flush()
        if rest:
            state.partial[stream] = rest

    def finish(self, key: str) -> None:
        """The command ended: its unfinished last lines are printed, with a newline."""
        state = self.states.get(key)
        if state is None:
            return
        for stream in sorted(state.partial):
            target = self.err if stream == "stderr" else self.out
            target.write(state.prefix + state.partial.pop(stream) + b"\n")
            target.flush()


class ProgressLine:
    """A status line at the bottom of the terminal (stderr), erased whenever output is written."""

    def __init__(self, stream: BinaryIO | None) -> None:
        self.stream = stream
        self.shown = False
        self.last = 0.0

    def clear(self) -> None:
        if self.stream is not None and self.shown:
            self.stream.write(b"\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def show(self, text: str, force: bool = False) -> None:
        # Redrawing after every output event would flicker: at most ten times a second.
        now = time.monotonic()
        if self.stream is None or (not force and now - self.last < 0.1):
            return
        self.stream.write(b"\r\x1b[K" + text.encode("utf-8", "replace"))
        self.stream.flush()
        self.shown, self.last = True, now


# exit codes


def signal_number(name: Any) -> int | None:
    if isinstance(name, int):
        return name
    if isinstance(name, str) and name:
        if name.isdigit():
            return int(name)
        with contextlib.suppress(KeyError):
            return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    return None


def exit_code_for(command: dict[str, Any]) -> int:
    """The exit status `myx run` mirrors for a finished command."""
    status = command.get("status")
    code = command.get("exit_code")
    if status in EXIT_FOR_STATUS:
        return EXIT_FOR_STATUS[status]
    if isinstance(code, int) and code < 0:
        return min(128 - code, 255)  # killed by a signal, as a shell reports it
    if status == "success":
        return code if isinstance(code, int) and 0 <= code <= 255 else 0
    if isinstance(code, int) and 0 < code <= 255:
        return code
    signum = signal_number(command.get("signal"))
    return min(128 + signum, 255) if signum else 1


def end_note(command: dict[str, Any]) -> str | None:
    """A line for stderr when the exit status alone does not explain the end."""
    status = command.get("status")
    reason = command.get("status_reason")
    notes = []
    if status != "success" and (status != "failed" or command.get("exit_code") is None or reason):
        detail = f": {reason}" if reason else ""
        sig = f" (signal {command['signal']})" if command.get("signal") else ""
        notes.append(f"command {command.get('id')} on {command.get('host')} {status}{sig}{detail}")
    if command.get("output_truncated"):
        notes.append(f"the output of command {command.get('id')} was truncated by the agent's limit")
    return "; ".join(notes) or None


# following and waiting


def follow_stream(api: ApiClient, path: str, params: Any) -> Iterator[tuple[str, Any]]:
    """Events of an SSE stream, reconnecting when it breaks; stops after the ``end`` event.

    *params* is called before each (re)connect so a caller can resume from where it got to.
    """
    failures = 0
    while True:
        try:
            for event, data in api.sse(path, params()):
                failures = 0
                yield event, data
                if event == "end":
                    return
            raise StreamBroken("the event stream closed before the end")
        except (StreamBroken, ServerUnreachable) as exc:
            failures += 1
            if failures > STREAM_RETRIES:
                raise CliError(f"{exc.message} (gave up after {STREAM_RETRIES} reconnects)") from exc
            time.sleep(min(2 ** (failures - 1), 8))


def follow_command(api: ApiClient, command_id: str, out: BinaryIO, err: BinaryIO) -> dict[str, Any]:
    """Print a command's output live; its final record."""
    writer = OutputWriter(out, err)
    path = f"/api/commands/{ref(command_id)}/stream"
    for event, data in follow_stream(api, path, lambda: {"offset": writer.offset}):
        if event == "output":
            writer.page(data)
        elif event == "end":
            return dict(data)
    raise CliError("the command stream ended without a result")  # pragma: no cover - follow_stream


def wait_command(api: ApiClient, command_id: str) -> dict[str, Any]:
    while True:
        command: dict[str, Any] = api.get(f"/api/commands/{ref(command_id)}", params={"wait": 300})
        if command.get("status") in FINAL_STATES:
            return command


def wait_batch(api: ApiClient, batch_id: str) -> dict[str, Any]:
    while True:
        batch: dict[str, Any] = api.get(f"/api/batches/{ref(batch_id)}", params={"wait": 3600})
        if batch.get("status") != "running":
            return batch


def stored_pages(api: ApiClient, command_id: str) -> Iterator[dict[str, Any]]:
    """Pages of a command's stored output, until complete or until nothing more is stored yet."""
    offset = 0
    while True:
        page: dict[str, Any] = api.get(f"/api/commands/{ref(command_id)}/output", params={"offset": offset})
        yield page
        if page.get("complete") or int(page.get("next_offset", offset)) <= offset:
            return
        offset = int(page["next_offset"])


def stored_output(api: ApiClient, command_id: str) -> tuple[bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    writer = OutputWriter(out, err)
    for page in stored_pages(api, command_id):
        writer.page(page)
    return out.getvalue(), err.getvalue()


def with_output(api: ApiClient, command: dict[str, Any]) -> dict[str, Any]:
    # JSON carries text: output that is not UTF-8 is shown with replacement characters here;
    # `myx logs ID` prints the exact bytes.
    out, err = stored_output(api, str(command["id"]))
    return {**command, "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}


def cancel_quietly(api: ApiClient, path: str) -> None:
    with contextlib.suppress(CliError, KeyboardInterrupt):
        api.post(path)


# run


RUN_ARGV_KEY = "myx_remote_argv"
RUN_CONTEXT_SETTINGS: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}


class RunCommand(TyperCommand):
    """Keeps every word after the first ``--`` away from option parsing, for the remote command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta[RUN_ARGV_KEY] = args[cut + 1 :]
            args = args[:cut]
        return super().parse_args(ctx, args)


def split_run_words(words: list[str]) -> tuple[list[str], list[str]]:
    """``TARGET... -- CMD [ARGS...]`` split at the first ``--``."""
    if "--" not in words:
        raise CliError("separate the targets from the command with --: myx run TARGET... -- CMD [ARGS...]")
    cut = words.index("--")
    return check_run_words(words[:cut], words[cut + 1 :])


def check_run_words(targets: list[str], command: list[str]) -> tuple[list[str], list[str]]:
    for target in targets:
        if target.startswith("-"):
            raise CliError(f"unknown option {target!r} (options of the remote command go after --)")
    if not targets:
        raise CliError("name at least one target (host id or name, label=value or all) before --")
    if not command or not command[0]:
        raise CliError("give the command to run after --")
    return targets, command


def run_words(ctx: typer.Context) -> tuple[list[str], list[str]]:
    """Targets and remote command of this invocation."""
    if RUN_ARGV_KEY in ctx.meta:
        return check_run_words(list(ctx.args), list(ctx.meta[RUN_ARGV_KEY]))
    # Registered without RunCommand: the parser dropped the `--` (ctx.args is targets + command),
    # so only the process's own argv still shows where it was.
    args = list(ctx.args)
    argv = sys.argv[1:]
    if "--" in argv:
        command = argv[argv.index("--") + 1 :]
        if command and args[len(args) - len(command) :] == command:
            return check_run_words(args[: len(args) - len(command)], command)
    raise CliError(
        "separate the targets from the command with --: myx run TARGET... -- CMD [ARGS...]"
        if "--" not in argv
        else "cannot tell the targets from the command (myx run must be registered with RunCommand)"
    )


def command_body(command: list[str], shell: bool, timeout: float | None) -> dict[str, Any]:
    body: dict[str, Any] = (
        {"command": " ".join(command), "shell": True}
        if shell
        else {"command": command[0], "args": command[1:]}
    )
    if timeout is not None:
        body["timeout"] = timeout
    return body


def is_single_host(targets: list[str]) -> bool:
    return len(targets) == 1 and targets[0] != "all" and "=" not in targets[0]


def run(
    ctx: typer.Context,
    shell: Annotated[
        bool, typer.Option("--shell", help="Run the words as one /bin/sh command line.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.001, help="Seconds before the command is killed.")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="No live output: print the result as JSON.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, help="Hosts running at once (batches).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Hosts per rolling wave (batches).")
    ] = None,
    max_failures: Annotated[
        int | None, typer.Option("--max-failures", min=0, help="Stop the batch after more failed hosts.")
    ] = None,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Wait for the end, then print the output.")
    ] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Run a command on hosts: `myx run TARGET... -- CMD [ARGS...]`.

    TARGET: a host id or name, key=value (hosts with that label) or all.

    One host: live output, and its exit status (124 timeout, 130 cancelled, 255 lost).

    Several: lines prefixed by host, a summary; exit 0 if all succeeded, 2 if --max-failures stopped it.
    """
    targets, words = run_words(ctx)
    body = command_body(words, shell, timeout)
    with connect(server, token) as api:
        if is_single_host(targets):
            code = run_single(api, {**body, "host": targets[0]}, json_out, no_stream)
        else:
            body["target"] = targets
            for key, value in (
                ("max_concurrency", concurrency),
                ("batch_size", batch_size),
                ("max_failures", max_failures),
            ):
                if value is not None:
                    body[key] = value
            code = run_batch(api, body, json_out, no_stream)
    raise typer.Exit(code)


def run_single(api: ApiClient, body: dict[str, Any], json_out: bool, no_stream: bool) -> int:
    command = api.post("/api/commands", json=body)
    command_id = str(command["id"])
    try:
        if json_out:
            final = wait_command(api, command_id)
            print_json(with_output(api, final))
            return exit_code_for(final)
        if no_stream:
            final = wait_command(api, command_id)
            show_stored(api, command_id, _stdout(), _stderr())
        else:
            final = follow_command(api, command_id, _stdout(), _stderr())
    except KeyboardInterrupt:
        typer.echo(f"myx: cancelling command {command_id}", err=True)
        cancel_quietly(api, f"/api/commands/{ref(command_id)}/cancel")
        return EXIT_FOR_STATUS["cancelled"]
    note = end_note(final)
    if note:
        typer.echo(f"myx: {note}", err=True)
    return exit_code_for(final)


def show_stored(api: ApiClient, command_id: str, out: BinaryIO, err: BinaryIO) -> None:
    writer = OutputWriter(out, err)
    for page in stored_pages(api, command_id):
        writer.page(page)


class BatchFollower:
    """Live state of a batch on the terminal: prefixed lines, progress, per-host results."""

    def __init__(self, batch: dict[str, Any], out: BinaryIO, err: BinaryIO, tty: bool) -> None:
        self.batch = batch
        self.commands: dict[str, dict[str, Any]] = {c["id"]: c for c in batch.get("commands") or []}
        self.total = int(batch.get("total") or len(self.commands))
        self.finals: dict[str, dict[str, Any]] = {}
        self.lines = LinePrefixer(out, err)
        self.progress = ProgressLine(err if tty else None)
        # Pad prefixes to the longest host name (capped) so columns of output line up.
        width = min(max((len(str(c["host"])) for c in self.commands.values()), default=0), 32)
        for command_id, command in self.commands.items():
            self.lines.add(command_id, f"{str(command['host']).ljust(width)} | ")

    def event(self, event: str, data: Any) -> None:
        if event == "output":
            self.progress.clear()
            self.lines.page(str(data.get("command_id")), data)
        elif event == "command" and data.get("id") not in self.finals:
            self.progress.clear()
            self.lines.finish(str(data["id"]))
            self.finals[str(data["id"])] = data
            self.commands[str(data["id"])] = data
        self.progress.show(self.status_text())

    def status_text(self) -> str:
        failed = sum(1 for c in self.finals.values() if c.get("status") != "success")
        return f"[{len(self.finals)}/{self.total} done, {failed} failed]"

    def close(self) -> None:
        self.progress.clear()
        for command_id in list(self.lines.states):
            self.lines.finish(command_id)


def run_batch(api: ApiClient, body: dict[str, Any], json_out: bool, no_stream: bool) -> int:
    batch = api.post("/api/batches", json=body)
    batch_id = str(batch["id"])
    try:
        if json_out:
            final = wait_batch(api, batch_id)
            final["commands"] = [with_output(api, c) for c in final.get("commands") or []]
            print_json(final)
            return batch_exit_code(final)
        if no_stream:
            final = wait_batch(api, batch_id)
            follower = BatchFollower(final, _stdout(), _stderr(), tty=False)
            for command in final.get("commands") or []:
                for page in stored_pages(api, str(command["id"])):
                    follower.lines.page(str(command["id"]), page)
                follower.lines.finish(str(command["id"]))
        else:
            final = follow_batch(api, batch)
    except KeyboardInterrupt:
        typer.echo(f"myx: cancelling batch {batch_id}", err=True)
        cancel_batch(api, batch_id)
        return EXIT_FOR_STATUS["cancelled"]
    print_batch_summary(final)
    return batch_exit_code(final)


def follow_batch(api: ApiClient, batch: dict[str, Any]) -> dict[str, Any]:
    batch_id = str(batch["id"])
    follower = BatchFollower(batch, _stdout(), _stderr(), tty=sys.stderr.isatty())
    follower.progress.show(follower.status_text(), force=True)
    try:
        for event, data in follow_stream(api, f"/api/batches/{ref(batch_id)}/stream", lambda: None):
            follower.event(event, data)
    finally:
        follower.close()
    # The end event carries counts only; the summary wants every host's final record.
    final: dict[str, Any] = api.get(f"/api/batches/{ref(batch_id)}")
    return final


def cancel_batch(api: ApiClient, batch_id: str) -> None:
    # Cancelling a batch stops its pending hosts; hosts already running are cancelled one by one.
    with contextlib.suppress(CliError, KeyboardInterrupt):
        api.post(f"/api/batches/{ref(batch_id)}/cancel")
        batch = api.get(f"/api/batches/{ref(batch_id)}")
        for command in batch.get("commands") or []:
            if command.get("status") not in FINAL_STATES:
                cancel_quietly(api, f"/api/commands/{ref(command['id'])}/cancel")


def batch_exit_code(batch: dict[str, Any]) -> int:
    if batch.get("status") == "stopped":
        return EXIT_BATCH_STOPPED
    commands = batch.get("commands")
    if commands is not None:
        return 0 if commands and all(c.get("status") == "success" for c in commands) else 1
    return 0 if batch.get("status") == "success" else 1


def print_batch_summary(batch: dict[str, Any]) -> None:
    console = err_console()
    commands = batch.get("commands") or []
    shown = commands
    if len(commands) > SUMMARY_ROWS:
        # Thousands of "success" rows would bury the hosts that need attention.
        shown = [c for c in commands if c.get("status") != "success"]
    if shown:
        console.print(summary_table(shown))
    if len(shown) < len(commands):
        console.print(f"({len(commands) - len(shown)} successful hosts not listed)")
    counts = batch.get("counts") or {}
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    reason = f" ({batch['status_reason']})" if batch.get("status_reason") else ""
    line = Text(f"{batch.get('total', 0)} hosts: {parts or 'none'}; batch {batch.get('status')}{reason}")
    console.print(line)


def summary_table(commands: list[dict[str, Any]]) -> Table:
    table = Table("host", "status", "exit", "reason", box=None)
    for command in commands:
        code = command.get("exit_code")
        exit_text = str(code) if code is not None else str(command.get("signal") or "-")
        table.add_row(
            Text(str(command.get("host"))),
            styled_status(command.get("status")),
            exit_text,
            Text(str(command.get("status_reason") or "")),
        )
    return table


# logs


def logs(
    command_id: Annotated[
        str, typer.Argument(help="Command id (from `myx run --json` or `myx commands list`).")
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the command ends.")
    ] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print a command's output; with -f follow it live. Exits with the command's status like `myx run`."""
    with connect(server, token) as api:
        if follow:
            try:
                final = follow_command(api, command_id, _stdout(), _stderr())
            except KeyboardInterrupt:
                # Only the viewer stops: the command itself keeps running.
                raise typer.Exit(EXIT_FOR_STATUS["cancelled"]) from None
        else:
            show_stored(api, command_id, _stdout(), _stderr())
            final = api.get(f"/api/commands/{ref(command_id)}")
            if final.get("status") not in FINAL_STATES:
                typer.echo(
                    f"myx: command {command_id} is still {final.get('status')} (-f follows it)", err=True
                )
                raise typer.Exit(0)
    note = end_note(final)
    if note:
        typer.echo(f"myx: {note}", err=True)
    raise typer.Exit(exit_code_for(final))


# command history

commands_app = typer.Typer(help="Command history.", no_args_is_help=True)


@commands_app.command("list")
def commands_list(
    host: Annotated[str | None, typer.Option("--host", help="Only this host (id or name).")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only commands in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many.")] = 50,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """List recent commands, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if host:
        params["host"] = host
    if status:
        params["status"] = status
    with connect(server, token) as api:
        page = api.get("/api/commands", params=params)
    items = page["items"]
    if json_out:
        print_json(items)
        return
    if not items:
        err_console().print("no commands")
        return
    table = Table(box=None)
    # Full ids: they are what `myx logs` takes. The command line gives way instead.
    table.add_column("id", no_wrap=True, min_width=max(len(str(c["id"])) for c in items))
    for name in ("host", "status", "exit", "command", "created", "duration"):
        table.add_column(name)
    for c in items:
        duration = c.get("duration")
        table.add_row(
            str(c["id"]),
            Text(str(c.get("host"))),
            styled_status(c.get("status")),
            "-" if c.get("exit_code") is None else str(c["exit_code"]),
            Text(command_line(c), overflow="ellipsis", no_wrap=True),
            human_age(c.get("created_at")),
            "-" if duration is None else f"{duration:.1f}s",
        )
    out_console().print(table)


@commands_app.command("cancel")
def commands_cancel(
    command_id: Annotated[str, typer.Argument(help="Command id.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Ask the agent to stop a running command."""
    with connect(server, token) as api:
        command = api.post(f"/api/commands/{ref(command_id)}/cancel")
    typer.echo(f"command {command['id']} on {command.get('host')}: {command.get('status')}")


def register(app: typer.Typer) -> None:
    """Add the REST commands to the top-level ``myx`` app."""
    app.command("login")(login)
    app.command(
        "run",
        cls=RunCommand,
        context_settings=RUN_CONTEXT_SETTINGS,
        options_metavar="[OPTIONS] TARGET... -- COMMAND [ARGS]...",
    )(run)
    app.command("logs")(logs)
    app.add_typer(hosts_app, name="hosts")
    app.add_typer(commands_app, name="commands")


__all__ = [
    "RUN_CONTEXT_SETTINGS",
    "RunCommand",
    "commands_app",
    "hosts_app",
    "login",
    "logs",
    "register",
    "run",
]


# SSH installs


@hosts_app.command("ssh-access")
def hosts_ssh_access(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    user: Annotated[str, typer.Option("--user", "-u", help="SSH user.")],
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="SSH port.")] = 22,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", "-i", help="Private key file (read here, stored encrypted).")
    ] = None,
    password: Annotated[
        bool, typer.Option("--password", help="Ask for an SSH password (stored encrypted).")
    ] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Store how the control server logs in to a host over SSH (for `myx hosts install`)."""
    body: dict[str, Any] = {"user": user, "port": port}
    if key_file is not None:
        try:
            body["private_key"] = key_file.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {key_file}: {exc.strerror}") from None
    if password:
        body["password"] = typer.prompt("SSH password", hide_input=True)
    if "private_key" not in body and "password" not in body:
        raise CliError("give --key-file FILE or --password", exit_code=2)
    with connect(server, token) as api:
        api.request("PUT", f"/api/hosts/{ref(host)}/ssh", json=body)
    typer.echo(f"saved SSH access for {host}: {user}@…:{port}")


@hosts_app.command("install")
def hosts_install(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Print the deployment log live.")] = False,
    install_dir: Annotated[
        str | None, typer.Option(help="Where the zipapp goes (default /opt/myx-agent).")
    ] = None,
    config_dir: Annotated[
        str | None, typer.Option(help="Config and TLS files (default /etc/myx-agent).")
    ] = None,
    state_dir: Annotated[str | None, typer.Option(help="Command spool (default /var/lib/myx-agent).")] = None,
    service_manager: Annotated[
        str | None, typer.Option(help="auto (systemd when present), systemd or supervisor.")
    ] = None,
    bind_address: Annotated[str | None, typer.Option(help="Address the agent listens on.")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Install (or reinstall) the agent over SSH with Ansible."""
    options = {
        "install_dir": install_dir,
        "config_dir": config_dir,
        "state_dir": state_dir,
        "service_manager": service_manager,
        "bind_address": bind_address,
    }
    _deploy(host, "install", {k: v for k, v in options.items() if v is not None}, follow, server, token)


@hosts_app.command("uninstall")
def hosts_uninstall(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Print the deployment log live.")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Stop and remove the agent over SSH."""
    _deploy(host, "uninstall", None, follow, server, token)


@hosts_app.command("upgrade")
def hosts_upgrade(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Print the deployment log live.")] = False,
    ssh: Annotated[
        bool, typer.Option("--ssh", help="Upgrade over SSH (upgrade_agent.yml) instead of through the agent.")
    ] = False,
    health_deadline: Annotated[
        float,
        typer.Option(min=5, max=3600, help="Seconds the new version has to answer before it is rolled back."),
    ] = 60,
    force: Annotated[bool, typer.Option("--force", help="Upgrade even to the running version.")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Upgrade the agent to the control server's zipapp; a version that does not come up is rolled back."""
    params = {"method": "ssh" if ssh else "agent", "health_deadline": health_deadline, "force": force}
    _deploy(host, "upgrade", None, follow, server, token, params)


def _deploy(
    host: str,
    kind: str,
    body: dict[str, Any] | None,
    follow: bool,
    server: str | None,
    token: str | None,
    params: dict[str, Any] | None = None,
) -> None:
    with connect(server, token) as api:
        deployment = api.post(f"/api/hosts/{ref(host)}/{kind}", json=body, params=params)
        typer.echo(f"deployment {deployment['id']} started ({kind} on {host})", err=True)
        if not follow:
            return
        offset = 0
        while True:
            page = api.get(f"/api/deployments/{deployment['id']}", params={"log_offset": offset, "wait": 30})
            sys.stdout.write(page["log"])
            sys.stdout.flush()
            offset = page["log_offset"] + len(page["log"])
            if page["status"] in ("success", "failed"):
                break
    if page["status"] != "success":
        raise CliError(
            f"{kind} failed: {(page.get('error') or '').splitlines()[0] if page.get('error') else ''}"
        )
    typer.echo(f"{kind} of {host} succeeded", err=True)


@hosts_app.command("rotate-cert")
def hosts_rotate_cert(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Issue a new agent certificate and hot-swap it (commands in flight keep running)."""
    with connect(server, token) as api:
        updated = api.post(f"/api/hosts/{ref(host)}/certificate")
    agent = updated["agent"]
    typer.echo(f"{host}: new certificate {agent['cert_fingerprint']} valid until {agent['cert_not_after']}")
