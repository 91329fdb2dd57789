"""Unit tests of the REST CLI that need no control server: config, argv, tar, SSE, output."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from myx.cli import client, remote
from myx.cli.client import ApiClient, ClientConfig, CliError, iter_sse, resolve_config, save_login
from myx.cli.remote import LinePrefixer, exit_code_for, extract_bundle, split_run_words

URL = "http://control.test:8700"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("MYX_SERVER_URL", "MYX_TOKEN", "MYX_CA_FILE", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "conf" / "cli.json"
    monkeypatch.setenv("MYX_CLI_CONFIG", str(path))
    return path


# configuration


def write_login(path: Path, url: str = URL, token: str = "file-token", ca: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"server_url": url, "token": token, "ca_file": ca}))


def test_defaults_without_anything() -> None:
    cfg = resolve_config(None, None)
    assert cfg == ClientConfig("http://127.0.0.1:8700", None, None)


def test_file_is_used_when_nothing_else(clean_env: Path) -> None:
    write_login(clean_env, ca="/etc/myx/ca.crt")
    assert resolve_config(None, None) == ClientConfig(URL, "file-token", "/etc/myx/ca.crt")


def test_env_beats_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_login(clean_env)
    monkeypatch.setenv("MYX_TOKEN", "env-token")
    assert resolve_config(None, None).token == "env-token"
    monkeypatch.setenv("MYX_SERVER_URL", "http://other:1/")
    cfg = resolve_config(None, None)
    assert cfg.server_url == "http://other:1"
    assert cfg.token == "env-token"


def test_flags_beat_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_login(clean_env)
    monkeypatch.setenv("MYX_SERVER_URL", "http://env:1")
    monkeypatch.setenv("MYX_TOKEN", "env-token")
    assert resolve_config("http://flag:2", "flag-token") == ClientConfig("http://flag:2", "flag-token", None)


def test_saved_token_is_not_sent_to_another_server(clean_env: Path) -> None:
    write_login(clean_env, ca="/ca.crt")
    assert resolve_config("http://elsewhere:8700", None) == ClientConfig("http://elsewhere:8700", None, None)
    assert resolve_config(URL + "/", None).token == "file-token"


def test_xdg_config_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MYX_CLI_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert client.config_path() == tmp_path / "xdg" / "myx" / "cli.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")
    assert client.config_path() == Path.home() / ".config" / "myx" / "cli.json"


def test_broken_config_file_is_a_clear_error(clean_env: Path) -> None:
    clean_env.parent.mkdir()
    clean_env.write_text("{nope")
    with pytest.raises(CliError, match="not valid JSON"):
        resolve_config(None, None)


def test_save_login_is_private_and_round_trips(clean_env: Path) -> None:
    path = save_login(ClientConfig(URL, "secret", None))
    assert path == clean_env
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert resolve_config(None, None) == ClientConfig(URL, "secret", None)
    save_login(ClientConfig(URL, "again", "/ca.pem"))  # replaces, leaves no temp file behind
    assert [p.name for p in path.parent.iterdir()] == ["cli.json"]
    assert resolve_config(None, None).token == "again"


def test_url_needs_a_scheme() -> None:
    with pytest.raises(CliError, match="scheme"):
        resolve_config("localhost:8700", None)


# HTTP errors


def api(handler: Callable[[httpx.Request], httpx.Response], token: str | None = "t") -> ApiClient:
    return ApiClient(ClientConfig(URL, token, None), transport=httpx.MockTransport(handler))


def test_missing_token_says_how_to_log_in() -> None:
    with pytest.raises(CliError, match="myx login"):
        ApiClient(ClientConfig(URL, None, None))


def test_server_error_message_and_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer t"
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no host 'x'"}})

    with pytest.raises(CliError) as info:
        api(handler).get("/api/hosts/x")
    assert str(info.value) == "no host 'x' (HTTP 404)"


def test_unreachable_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(CliError, match=r"cannot reach the MyX control server at .*connection refused"):
        api(handler).get("/api/hosts")


# server-sent events


def test_sse_parsing_across_chunk_boundaries() -> None:
    stream = (
        b": keep-alive\n\n"
        b'event: output\r\ndata: {"a":\n'
        b'data: "h\xc3\xa9"}\r\n\r\n'
        b'id: 7\nretry: 10\nevent: end\ndata: {"status": "success"}\n\n'
        b'event: output\ndata: {"cut": true}\n'  # no blank line: never dispatched
    )
    # One byte at a time splits lines, CRLFs and the two-byte UTF-8 character.
    events = list(iter_sse(bytes([b]) for b in stream))
    assert events == [("output", {"a": "hé"}), ("end", {"status": "success"})]


def test_sse_non_json_data_and_default_event() -> None:
    assert list(iter_sse([b"data:plain\n\n"])) == [("message", {"data": "plain"})]


# run: the -- split


def test_split_run_words() -> None:
    assert split_run_words(["web1", "--", "ls", "-la", "--", "x"]) == (["web1"], ["ls", "-la", "--", "x"])
    assert split_run_words(["role=web", "all", "--", "--version"]) == (["role=web", "all"], ["--version"])
    with pytest.raises(CliError, match="separate"):
        split_run_words(["web1", "ls"])
    with pytest.raises(CliError, match="target"):
        split_run_words(["--", "ls"])
    with pytest.raises(CliError, match="command"):
        split_run_words(["web1", "--"])
    with pytest.raises(CliError, match="unknown option"):
        split_run_words(["web1", "-x", "--", "ls"])


def test_command_body() -> None:
    assert remote.command_body(["ls", "-l"], False, None) == {"command": "ls", "args": ["-l"]}
    assert remote.command_body(["echo", "$HOME", "|", "wc"], True, 5) == {
        "command": "echo $HOME | wc",
        "shell": True,
        "timeout": 5,
    }
    assert remote.is_single_host(["web1"])
    assert not remote.is_single_host(["all"])
    assert not remote.is_single_host(["role=web"])
    assert not remote.is_single_host(["web1", "web2"])


def sse_body(*events: tuple[str, Any]) -> bytes:
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


class FakeServer:
    """Answers the few endpoints `myx run` uses, recording what it was sent."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        answer = self.routes[f"{request.method} {request.url.path}"]
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, bytes):
            return httpx.Response(200, content=answer, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=answer)


def cli(monkeypatch: pytest.MonkeyPatch, server: FakeServer, register: bool = True) -> typer.Typer:
    monkeypatch.setattr(remote, "connect", lambda s, t: api(server))
    app = typer.Typer()
    if register:
        remote.register(app)
    else:
        app.command("run", context_settings=remote.RUN_CONTEXT_SETTINGS)(remote.run)
        app.command("logs")(remote.logs)
    return app


def output(command_id: str, offset: int, *chunks: tuple[str, bytes]) -> dict[str, Any]:
    wire = []
    for stream, data in chunks:
        wire.append({**remote_chunk(data), "offset": offset, "stream": stream})
        offset += len(data)
    return {"command_id": command_id, "offset": wire[0]["offset"], "chunks": wire}


def remote_chunk(data: bytes) -> dict[str, Any]:
    from myx.protocol.output import OutputChunk

    return dict(OutputChunk("c", 0, "stdout", data).to_wire())


def command(cid: str, host: str, status: str, exit_code: int | None, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "host": host, "status": status, "exit_code": exit_code, **extra}


def test_run_single_streams_and_exits_with_remote_code(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer(
        {
            "POST /api/commands": {"id": "c1"},
            "GET /api/commands/c1/stream": sse_body(
                ("output", output("c1", 0, ("stdout", b"hel"), ("stderr", b"oops\n"), ("stdout", b"lo\n"))),
                ("end", command("c1", "web1", "failed", 3)),
            ),
        }
    )
    app = cli(monkeypatch, server)
    result = CliRunner().invoke(app, ["run", "web1", "--timeout", "5", "--", "ls", "-la", "--json"])
    assert result.exit_code == 3, result.output
    assert result.stdout == "hello\n"
    assert "oops" in result.stderr
    assert server.requests[0] == (
        "POST",
        "/api/commands",
        {"command": "ls", "args": ["-la", "--json"], "timeout": 5.0, "host": "web1"},
    )


def test_run_without_run_command_class_uses_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer(
        {
            "POST /api/commands": {"id": "c1"},
            "GET /api/commands/c1/stream": sse_body(("end", command("c1", "web1", "timeout", None))),
        }
    )
    app = cli(monkeypatch, server, register=False)
    argv = ["run", "web1", "--shell", "--", "sleep", "9", "--x"]
    monkeypatch.setattr("sys.argv", ["myx", *argv])
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 124, result.output
    assert server.requests[0][2] == {"command": "sleep 9 --x", "shell": True, "host": "web1"}


def test_run_reconnects_and_resumes_at_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    offsets: list[str | None] = []

    def stream(request: httpx.Request) -> bytes:
        offsets.append(request.url.params.get("offset"))
        if len(offsets) == 1:  # the stream breaks after the first page
            return sse_body(("output", output("c1", 0, ("stdout", b"one\n"))))
        # the server repeats a byte we already have: it must not be printed twice
        return sse_body(
            ("output", output("c1", 3, ("stdout", b"\ntwo\n"))),
            ("end", command("c1", "web1", "success", 0)),
        )

    server = FakeServer({"POST /api/commands": {"id": "c1"}, "GET /api/commands/c1/stream": stream})
    result = CliRunner().invoke(cli(monkeypatch, server), ["run", "web1", "--", "x"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "one\ntwo\n"
    assert offsets == ["0", "4"]


def test_run_batch_prefixes_lines_and_summarizes(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = [command("c1", "web1", "pending", None), command("c2", "db", "pending", None)]
    finals = [command("c1", "web1", "success", 0), command("c2", "db", "failed", 2)]
    server = FakeServer(
        {
            "POST /api/batches": {"id": "b1", "total": 2, "commands": commands},
            "GET /api/batches/b1/stream": sse_body(
                ("output", output("c1", 0, ("stdout", b"a1\na"))),
                ("output", output("c2", 0, ("stdout", b"b1\n"), ("stderr", b"bad\n"))),
                ("output", output("c1", 4, ("stdout", b"2\nlast"))),
                ("command", finals[0]),
                ("command", finals[1]),
                ("end", {"id": "b1", "status": "failed", "counts": {}}),
            ),
            "GET /api/batches/b1": {
                "id": "b1",
                "status": "failed",
                "total": 2,
                "counts": {"success": 1, "failed": 1},
                "commands": finals,
            },
        }
    )
    app = cli(monkeypatch, server)
    result = CliRunner().invoke(app, ["run", "web1", "db", "--concurrency", "3", "--", "uname"])
    assert result.exit_code == 1, result.output
    assert result.stdout == "web1 | a1\ndb   | b1\nweb1 | a2\nweb1 | last\n"
    assert "db   | bad\n" in result.stderr
    assert "1 failed" in result.stderr
    assert server.requests[0][2] == {
        "command": "uname",
        "args": [],
        "target": ["web1", "db"],
        "max_concurrency": 3,
    }


def test_exit_codes() -> None:
    assert exit_code_for(command("c", "h", "success", 0)) == 0
    assert exit_code_for(command("c", "h", "failed", 7)) == 7
    assert exit_code_for(command("c", "h", "failed", None)) == 1
    assert exit_code_for(command("c", "h", "failed", None, signal="SIGKILL")) == 137
    assert exit_code_for(command("c", "h", "failed", -15)) == 143
    assert exit_code_for(command("c", "h", "timeout", None)) == 124
    assert exit_code_for(command("c", "h", "cancelled", None)) == 130
    assert exit_code_for(command("c", "h", "lost", None)) == 255
    assert remote.batch_exit_code({"status": "stopped", "commands": []}) == 2
    assert remote.batch_exit_code({"status": "success", "commands": finals_ok()}) == 0


def finals_ok() -> list[dict[str, Any]]:
    return [command("c1", "a", "success", 0), command("c2", "b", "success", 0)]


# batch output lines


def test_prefixer_puts_prefixes_at_line_starts() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    lines = LinePrefixer(out, err)
    lines.add("c1", "web1 | ")
    lines.add("c2", "db   | ")
    lines.page("c1", output("c1", 0, ("stdout", b"par")))
    lines.page("c2", output("c2", 0, ("stdout", b"x\ny"), ("stderr", b"e1")))
    lines.page("c1", output("c1", 3, ("stdout", b"tial\nnext\n")))
    lines.page("c1", output("c1", 0, ("stdout", b"partial\n")))  # a repeat after reconnect: ignored
    lines.page("c2", output("c2", 4, ("stderr", b"\n")))
    lines.finish("c2")
    lines.finish("c1")
    assert out.getvalue() == b"db   | x\nweb1 | partial\nweb1 | next\ndb   | y\n"
    assert err.getvalue() == b"db   | e1\n"


def test_prefixer_bounds_lines_without_newline() -> None:
    out = io.BytesIO()
    lines = LinePrefixer(out, io.BytesIO())
    state = lines.add("c", "h | ")
    lines.write(state, "stdout", b"x" * (remote.MAX_PARTIAL_LINE + 1))
    assert out.getvalue() == b"h | " + b"x" * (remote.MAX_PARTIAL_LINE + 1) + b"\n"


# bundles


def make_tar(entries: Iterator[tuple[tarfile.TarInfo, bytes]] | list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def entry(
    name: str, data: bytes = b"x", mode: int = 0o644, kind: bytes = tarfile.REGTYPE
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode, info.type = mode, kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    return info, data


def test_bundle_extracts_with_private_modes(tmp_path: Path) -> None:
    data = make_tar(
        [
            entry("ssl", mode=0o755, kind=tarfile.DIRTYPE),
            entry("config.json", b"{}", mode=0o644),
            entry("ssl/agent.crt", b"crt", mode=0o644),
            entry("ssl/agent.key", b"key", mode=0o644),
            entry("./ssl/ca.crt", b"ca", mode=0o4777),
        ]
    )
    out = tmp_path / "bundle"
    written = extract_bundle(data, out)
    assert [p.relative_to(out).as_posix() for p in written] == [
        "config.json",
        "ssl/agent.crt",
        "ssl/agent.key",
        "ssl/ca.crt",
    ]

    def mode(rel: str) -> int:
        return stat.S_IMODE(os.stat(out / rel).st_mode)

    assert mode(".") == 0o700
    assert mode("ssl") == 0o700
    assert mode("config.json") == 0o600
    assert mode("ssl/agent.key") == 0o600
    assert mode("ssl/agent.crt") == 0o644
    assert mode("ssl/ca.crt") == 0o755
    assert (out / "ssl" / "agent.key").read_bytes() == b"key"


@pytest.mark.parametrize(
    "bad",
    [
        entry("../evil"),
        entry("ssl/../../evil"),
        entry("/etc/evil"),
        entry("link", kind=tarfile.SYMTYPE),
        entry("hard", kind=tarfile.LNKTYPE),
        entry("fifo", kind=tarfile.FIFOTYPE),
    ],
)
def test_bundle_refuses_escapes_and_writes_nothing(
    tmp_path: Path, bad: tuple[tarfile.TarInfo, bytes]
) -> None:
    data = make_tar([entry("config.json", b"{}"), bad])
    out = tmp_path / "out"
    with pytest.raises(CliError, match="refusing"):
        extract_bundle(data, out)
    assert not out.exists()
    assert not (tmp_path / "evil").exists()


def test_bundle_refuses_symlinked_directory_in_destination(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "ssl").symlink_to(elsewhere)
    with pytest.raises(CliError, match="outside"):
        extract_bundle(make_tar([entry("ssl/agent.key", b"k")]), out)
    assert list(elsewhere.iterdir()) == []


def test_bundle_rejects_garbage(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"not a valid tar\.gz"):
        extract_bundle(b"not a tarball", tmp_path / "x")
