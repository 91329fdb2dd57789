"""The CLI's side of the REST API: where the control server is, how to authenticate, errors for humans.

Nothing here prints; commands in ``remote.py`` decide what the user sees.  Every failure the user
can cause or fix (bad token, server down, 404) becomes a :class:`CliError` whose message is shown
as ``myx: error: <message>`` by ``myx.cli.main``.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_SERVER_URL = "http://127.0.0.1:8700"
# Streams carry a keep-alive comment every 15 s: 60 s of silence means the connection is dead.
STREAM_TIMEOUT = httpx.Timeout(connect=10, read=60, write=30, pool=10)
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class CliError(Exception):
    """An error the user sees as one line, ``myx: error: <message>``, and an exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class StreamBroken(CliError):
    """An event stream ended or failed before its ``end`` event; the caller may reconnect."""


class ServerUnreachable(CliError):
    """No connection to the control server (refused, DNS, TLS, timeout)."""


# configuration


@dataclass
class ClientConfig:
    server_url: str
    token: str | None
    ca_file: str | None


def config_path() -> Path:
    """Where ``myx login`` keeps the server URL and token."""
    override = os.environ.get("MYX_CLI_CONFIG")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "myx" / "cli.json"


def load_saved() -> dict[str, Any]:
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON ({exc}); run `myx login` again") from exc
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a JSON object; run `myx login` again")
    return data


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        raise CliError(f"server URL {url!r} needs a scheme, like http://HOST:8700 or https://HOST")
    return url


def resolve_config(server: str | None, token: str | None) -> ClientConfig:
    """Flags, then ``MYX_SERVER_URL``/``MYX_TOKEN``, then the file ``myx login`` wrote, then defaults."""
    saved = load_saved()
    saved_url = _str_or_none(saved.get("server_url"))
    url = normalize_url(server or os.environ.get("MYX_SERVER_URL") or saved_url or DEFAULT_SERVER_URL)
    # The saved token and CA belong to the server they were saved for: never send that token to
    # another server named by a flag or the environment.
    same_server = saved_url is not None and normalize_url(saved_url) == url
    saved_token = _str_or_none(saved.get("token")) if same_server else None
    saved_ca = _str_or_none(saved.get("ca_file")) if same_server else None
    return ClientConfig(
        server_url=url,
        token=token or os.environ.get("MYX_TOKEN") or saved_token,
        ca_file=os.environ.get("MYX_CA_FILE") or saved_ca,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def save_login(cfg: ClientConfig) -> Path:
    """Write the login file atomically, readable by the user only (it holds a bearer token)."""
    path = config_path()
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    data = {"server_url": cfg.server_url, "token": cfg.token, "ca_file": cfg.ca_file}
    # mkstemp creates the file 0600 before any byte of the token is written; rename makes the
    # switch atomic so a crash never leaves a half-written file behind.
    fd, tmp = tempfile.mkstemp(prefix=".cli.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


# server-sent events


def iter_sse(chunks: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    """Events ``(name, parsed JSON data)`` from the bytes of a ``text/event-stream``.

    Lines are split on bytes, so a chunk boundary inside a line or a UTF-8 character is harmless.
    Comments (keep-alives), ``id:`` and ``retry:`` are ignored; multi-line ``data:`` is joined by
    newlines as the SSE spec says.
    """
    buffer = b""
    event = ""
    data: list[str] = []
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if line:
                event, data = _sse_field(line, event, data)
                continue
            if data:
                yield event or "message", _sse_data("\n".join(data))
            event, data = "", []
    # A stream cut mid-event does not deliver that event: the caller notices the missing ``end``.


def _sse_field(line: str, event: str, data: list[str]) -> tuple[str, list[str]]:
    if line.startswith(":"):
        return event, data
    name, _, value = line.partition(":")
    value = value.removeprefix(" ")
    if name == "event":
        return value, data
    if name == "data":
        return event, [*data, value]
    return event, data


def _sse_data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"data": text}


# HTTP


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify against the given CA file (the fleet CA) or the system trust store; never unverified."""
    if ca_file is None:
        return ssl.create_default_context()
    if not os.path.isfile(ca_file):
        raise CliError(f"CA file {ca_file} does not exist")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise CliError(f"cannot load CA file {ca_file}: {exc}") from exc


def error_message(response: httpx.Response) -> str:
    """The server's ``{"error": {"message"}}`` text, or something readable when there is none."""
    message = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                message = str(err.get("message") or err.get("code") or "")
            elif isinstance(body.get("detail"), str):
                message = body["detail"]
    except ValueError:
        message = response.text.strip()[:200]
    text = f"{message or response.reason_phrase or 'request failed'} (HTTP {response.status_code})"
    if response.status_code == 401:
        text += "; run `myx login` or set MYX_TOKEN"
    return text


class ApiClient:
    """A thin, synchronous REST client: JSON in, JSON out, :class:`CliError` on any failure."""

    def __init__(
        self,
        cfg: ClientConfig,
        *,
        require_token: bool = True,
        timeout: httpx.Timeout = REQUEST_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if require_token and not cfg.token:
            raise CliError(
                f"no API token for {cfg.server_url}: run `myx login --server {cfg.server_url}`, "
                "set MYX_TOKEN or pass --token"
            )
        self.cfg = cfg
        headers = {"User-Agent": "myx-cli", "Accept": "application/json"}
        if cfg.token:
            headers["Authorization"] = f"Bearer {cfg.token}"
        verify: ssl.SSLContext | bool = True
        if cfg.server_url.startswith("https:"):
            verify = ssl_context(cfg.ca_file)
        self.http = httpx.Client(
            base_url=cfg.server_url, headers=headers, timeout=timeout, verify=verify, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        response = self._send(method, path, **kw)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(f"{method} {path}: the server did not answer with JSON") from exc

    def download(self, path: str, **kw: Any) -> bytes:
        return self._send("GET", path, **kw).content

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if not response.is_success:
            raise CliError(error_message(response))
        return response

    def sse(self, path: str, params: dict[str, Any] | None = None) -> Iterator[tuple[str, Any]]:
        """Follow an event stream; :class:`StreamBroken` when it fails or ends early."""
        request = self.http.build_request(
            "GET", path, params=params, headers={"Accept": "text/event-stream"}, timeout=STREAM_TIMEOUT
        )
        try:
            response = self.http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        try:
            if not response.is_success:
                response.read()
                raise CliError(error_message(response))
            yield from iter_sse(response.iter_bytes())
        except httpx.TransportError as exc:
            raise StreamBroken(f"the event stream from {self.cfg.server_url} broke: {_reason(exc)}") from exc
        finally:
            response.close()

    def unreachable(self, exc: httpx.TransportError) -> CliError:
        reason = _reason(exc)
        if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
            # Not worth retrying: the same certificate will fail the same way.
            return CliError(
                f"cannot verify the TLS certificate of {self.cfg.server_url}: {reason}; "
                "give the CA with `myx login --ca FILE` or MYX_CA_FILE"
            )
        return ServerUnreachable(
            f"cannot reach the MyX control server at {self.cfg.server_url}: {reason}; "
            "is it running? (myx server / myx up)"
        )


def _reason(exc: BaseException) -> str:
    # httpx often wraps the useful OSError text (ECONNREFUSED, TLS alerts) one level down.
    text = str(exc) or (str(exc.__cause__) if exc.__cause__ else "") or type(exc).__name__
    return text
