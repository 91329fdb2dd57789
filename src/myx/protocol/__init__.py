"""The MyX wire protocol: JSON-RPC 2.0 messages, the agent method table and error codes.

Pure and sans-I/O: nothing here opens a socket or a file, so the agent (Python 3.9+) and the
control server share it unchanged.  Stdlib only.
"""

from __future__ import annotations

from myx.protocol.errors import ErrorCode, RpcError
from myx.protocol.jsonrpc import (
    Batch,
    ErrorResponse,
    Message,
    Notification,
    Request,
    Response,
    decode,
    encode,
)

__all__ = [
    "Batch",
    "ErrorCode",
    "ErrorResponse",
    "Message",
    "Notification",
    "Request",
    "Response",
    "RpcError",
    "decode",
    "encode",
]
