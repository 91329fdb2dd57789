"""The agent's exception tree.

Everything the agent raises on purpose derives from :class:`AgentError`; ``myx.agent.rpc``
maps these onto JSON-RPC error codes in one place.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of the agent's own errors."""


class ConfigError(AgentError):
    """The configuration cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class CertificateError(AgentError):
    """The TLS certificate or key is missing, unreadable or could not be generated."""


class UnknownCommandError(AgentError):
    """No command with that id (never started here, or its result has expired)."""


class BusyError(AgentError):
    """The concurrency limit is reached."""


class ConflictError(AgentError):
    """A command id was reused for a different command."""


class InvalidInputError(AgentError):
    """A request that is well-formed but cannot be honoured (e.g. an offset past the end)."""
