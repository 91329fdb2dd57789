"""Replacing the agent's certificate while it runs (``update_certificate``).

The new pair is checked by loading it into a scratch context first; only then are the files
swapped (atomically) and loaded into the live server context, so new handshakes use the new
certificate while connections and commands in flight carry on untouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import tempfile
from typing import Optional

from myx.agent.errors import InvalidInputError

log = logging.getLogger(__name__)


def fingerprint(cert_pem: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert_pem)
    return ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())


class TlsFiles:
    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.live: Optional[ssl.SSLContext] = None  # set once the server has built its context

    def replace(self, cert_pem: str, key_pem: str) -> str:
        """Validate, swap the files, reload the live context; returns the new fingerprint."""
        try:
            new_fingerprint = fingerprint(cert_pem)
        except ValueError:
            raise InvalidInputError("'cert' is not a PEM certificate") from None
        folder = os.path.dirname(self.key_path)
        staged_cert = _stage(folder, cert_pem, 0o644)
        staged_key = _stage(folder, key_pem, 0o600)
        try:
            scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            scratch.load_cert_chain(staged_cert, staged_key)
        except (ssl.SSLError, OSError) as exc:
            for path in (staged_cert, staged_key):
                os.unlink(path)
            raise InvalidInputError(f"the certificate and key do not load together: {exc}") from None
        os.replace(staged_key, self.key_path)
        os.replace(staged_cert, self.cert_path)
        if self.live is not None:
            self.live.load_cert_chain(self.cert_path, self.key_path)
        log.info("TLS certificate replaced fingerprint=%s", new_fingerprint)
        return new_fingerprint


def _stage(folder: str, text: str, mode: int) -> str:
    fd, path = tempfile.mkstemp(prefix=".staged-", dir=folder)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)
    return path
