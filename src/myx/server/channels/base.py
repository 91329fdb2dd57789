"""The :class:`AgentChannel` interface and the errors every channel raises.

Services talk to agents only through this interface; whether the control server dialled the
agent (listen mode, HTTPS) or the agent dialled in (connect mode, WebSocket) is the channel's
business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from myx.server.errors import AgentRejected, AgentUnavailable


class AgentMethodError(AgentRejected):
    """The agent answered the call with a JSON-RPC error (``rpc_code``)."""

    def __init__(self, rpc_code: int, message: str, data: Any = None) -> None:
        self.rpc_code = rpc_code
        self.data = data
        super().__init__(message)


class AgentHttpError(AgentRejected):
    """The agent refused at the HTTP level (401 bad token, 400, 413, ...); never retried."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class AgentEndpoint:
    """Where and how to reach one agent in listen mode."""

    host_id: int
    name: str
    address: str
    rpc_port: int
    rpc_path: str
    token: str
    pinned_cert_pem: bytes | None = None

    @property
    def url(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{address}:{self.rpc_port}/{self.rpc_path}/rpc"


class AgentChannel(Protocol):
    endpoint: AgentEndpoint

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        """Call *method*; raises AgentUnavailable, AgentHttpError or AgentMethodError."""
        ...


__all__ = ["AgentChannel", "AgentEndpoint", "AgentHttpError", "AgentMethodError", "AgentUnavailable"]
