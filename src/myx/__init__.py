"""MyX: agent-based fleet management and deployment platform."""

__version__ = "0.1.0"
