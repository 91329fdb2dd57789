"""Encryption of secrets at rest (agent tokens, SSH passwords): AES-256-GCM, as seed 000 asks.

The key is derived from the server secret (``MYX_SECRET_KEY`` or the data dir's ``secret.key``)
with PBKDF2-HMAC-SHA256.  The salt is a fixed application constant, not a per-value random salt:
the input is already a high-entropy server secret, and one derivation at start-up (not one per
decryption) is what keeps reading a thousand hosts' tokens cheap.  The salt still separates this
key from anything else someone might derive from the same secret.

Stored values look like ``v1.<base64url(nonce | ciphertext | tag)>``.  The version prefix pins
the whole recipe (salt, iteration count, cipher); changing any of them means a ``v2`` prefix and
keeping ``v1`` readable, never silently re-interpreting old rows.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from myx.server.errors import ConfigurationError, InvalidInput

VERSION = "v1"
# Part of the v1 format: changing either value makes every stored secret unreadable.
KDF_SALT = b"myx/secret-box/v1/aes-256-gcm"
KDF_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256; ~0.1 s, paid once per process
NONCE_BYTES = 12  # the 96-bit nonce GCM is specified for; random per message
_TAG_BYTES = 16
_PREFIX = VERSION + "."

WRONG_KEY_MESSAGE = (
    "cannot decrypt a stored secret: MYX_SECRET_KEY differs from the one it was encrypted with"
)


def derive_key(secret: str) -> bytes:
    """The 256-bit AES key for *secret* (deterministic: the same secret always gives the same key)."""
    if not secret:
        raise ConfigurationError("the secret key used to encrypt secrets at rest is empty")
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=KDF_SALT, iterations=KDF_ITERATIONS)
    return kdf.derive(secret.encode("utf-8"))


class SecretBox:
    """Encrypts and decrypts short text secrets under a key derived from the server secret.

    ``aad`` binds a ciphertext to where it is stored (say ``"hosts.agent_token:42"``): a value
    copied into another row or column then fails to decrypt instead of quietly becoming another
    host's credential.
    """

    __slots__ = ("_aead",)

    def __init__(self, secret: str) -> None:
        # Derive once: PBKDF2 is slow on purpose, and services decrypt on hot paths.
        self._aead = AESGCM(derive_key(secret))

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def encrypt(self, plaintext: str, aad: str = "") -> str:
        # A fresh random nonce per message. NIST SP 800-38D allows 2**32 random-nonce messages per
        # key; a fleet stores far fewer secrets than that, even counting every re-encryption.
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def decrypt(self, token: str, aad: str = "") -> str:
        raw = _decode(token)
        nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
        try:
            plaintext = self._aead.decrypt(nonce, sealed, aad.encode("utf-8"))
        except InvalidTag:
            # A wrong key, a tampered value and a mismatched aad look the same to GCM; a changed
            # MYX_SECRET_KEY is by far the likeliest cause, and the one an operator can fix.
            raise ConfigurationError(WRONG_KEY_MESSAGE) from None
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            # Only reachable if something other than encrypt() produced an authentic value.
            raise InvalidInput("a stored secret is not UTF-8 text") from None


def _decode(token: str) -> bytes:
    if not token.startswith(_PREFIX):
        raise InvalidInput(f"not an encrypted secret: expected a value starting with {_PREFIX!r}")
    body = token[len(_PREFIX) :]
    try:
        # Padding is stripped when encoding; restore it, and reject anything outside the alphabet
        # rather than letting b64decode skip it.
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("not an encrypted secret: the value is not valid base64url") from None
    if len(raw) < NONCE_BYTES + _TAG_BYTES:
        raise InvalidInput("not an encrypted secret: the value is too short")
    return raw
