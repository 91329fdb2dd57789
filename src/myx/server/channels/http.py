"""Listen mode: the control server dials the agent over HTTPS (JSON-RPC, ``X-Agent-Token``).

One pooled :class:`httpx.AsyncClient` serves every agent whose certificate the fleet CA issued
(connections are kept alive per agent); agents with a custom certificate get a client that
trusts exactly their pinned certificate.  Nothing here ever turns verification off.
"""

from __future__ import annotations

import itertools
import json
import ssl
from typing import Any

import httpx

from myx.protocol import jsonrpc
from myx.protocol.errors import RpcError
from myx.server.channels.base import AgentEndpoint, AgentHttpError, AgentMethodError
from myx.server.channels.retry import RetryPolicy, with_retries
from myx.server.errors import AgentUnavailable

_ids = itertools.count(1)


class HttpAgentChannel:
    def __init__(
        self, endpoint: AgentEndpoint, client: httpx.AsyncClient, policy: RetryPolicy, timeout: float
    ) -> None:
        self.endpoint = endpoint
        self._client = client
        self._policy = policy
        self._timeout = timeout

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        request = jsonrpc.Request(method, params or {}, next(_ids))
        body = jsonrpc.encode(request)

        async def attempt() -> Any:
            return await self._post(body, method, timeout or self._timeout)

        if not retry:
            return await attempt()
        return await with_retries(self._policy, attempt, f"{method} on {self.endpoint.name}")

    async def _post(self, body: bytes, method: str, timeout: float) -> Any:
        headers = {"X-Agent-Token": self.endpoint.token, "Content-Type": "application/json"}
        try:
            resp = await self._client.post(self.endpoint.url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            raise AgentUnavailable(f"{self.endpoint.name}: {method} timed out after {timeout:g} s") from None
        except (httpx.TransportError, ssl.SSLError, OSError) as exc:
            raise AgentUnavailable(
                f"{self.endpoint.name}: cannot reach the agent: {_describe(exc)}"
            ) from None
        if resp.status_code >= 500:
            raise AgentUnavailable(f"{self.endpoint.name}: agent answered HTTP {resp.status_code}")
        if resp.status_code == 401:
            raise AgentHttpError(401, f"{self.endpoint.name}: the agent refused our token (401)")
        if resp.status_code == 404:
            raise AgentHttpError(404, f"{self.endpoint.name}: no agent RPC endpoint at that path (404)")
        if resp.status_code != 200:
            raise AgentHttpError(
                resp.status_code, f"{self.endpoint.name}: agent answered HTTP {resp.status_code}"
            )
        return _result(self.endpoint.name, resp.content)


def _result(name: str, content: bytes) -> Any:
    message = jsonrpc.decode(content)
    if isinstance(message, jsonrpc.Response):
        return message.result
    if isinstance(message, jsonrpc.ErrorResponse):
        error: RpcError = message.error
        raise AgentMethodError(int(error.code), f"{name}: {error.message}", error.data)
    raise AgentUnavailable(
        f"{name}: the agent sent an unexpected reply: {json.dumps(content[:200].decode(errors='replace'))}"
    )


def _describe(exc: BaseException) -> str:
    # httpx wraps the interesting part (refused, TLS verify failure, ...) a level or two down.
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 3:
        text = str(current)
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__ or current.__context__
    return "; ".join(parts) or type(exc).__name__


def make_client(context: ssl.SSLContext, max_connections: int = 2048) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=60
    )
    return httpx.AsyncClient(verify=context, limits=limits, timeout=30.0, trust_env=False)
