"""Agent logging: one event per line on stderr, journald-friendly.

Under systemd (``JOURNAL_STREAM`` is set) journald stamps each line itself, so the timestamp is
left out.  Messages carry ``key=value`` pairs; tokens, secrets and command environments are
never passed to the logger in the first place.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # A traceback or a multi-line message must stay one journal entry.
        return text.replace("\n", " | ")


def setup(level: str = "info") -> None:
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(f"{stamp}%(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    # uvicorn's per-request access lines add nothing here and could carry query strings.
    logging.getLogger("uvicorn.access").disabled = True
