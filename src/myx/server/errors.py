"""The control server's domain errors.

Services raise these and nothing HTTP-shaped; ``myx.server.api.errors`` maps each to a status
code and the ``{"error": {"code", "message"}}`` body in one place.
"""

from __future__ import annotations


class MyxError(Exception):
    """Root of the control server's own errors. ``code`` is the stable machine-readable name."""

    code = "error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class NotFound(MyxError):
    code = "not_found"


class AlreadyExists(MyxError):
    code = "already_exists"


class InvalidInput(MyxError):
    code = "invalid_input"


class AuthenticationFailed(MyxError):
    code = "unauthenticated"


class PermissionDenied(MyxError):
    code = "forbidden"


class StateConflict(MyxError):
    """The operation does not fit the object's current state (e.g. cancel a finished command)."""

    code = "conflict"


class AgentUnavailable(MyxError):
    """The agent could not be reached (after the retries the policy allows)."""

    code = "agent_unavailable"


class AgentRejected(MyxError):
    """The agent answered, and said no (bad token, bad request, busy, ...)."""

    code = "agent_rejected"


class ConfigurationError(MyxError):
    code = "configuration"
