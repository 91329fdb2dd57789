"""Passwords, API tokens and the random credentials handed to agents.

Users' passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's low-memory
profile).  API tokens are different: they are long random secrets, so a single SHA-256 is
enough to store them (no dictionary to attack) and lets every request be checked in
microseconds instead of Argon2's ~100 ms.

API token format: ``myx_<token_id>_<secret>``.  ``token_id`` (12 hex characters) is stored in the
clear and finds the row; only the secret's hash is stored, and it is compared in constant time.
The ``myx_`` prefix makes leaked tokens recognisable to secret scanners.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from myx.server.errors import InvalidInput

API_TOKEN_PREFIX = "myx_"  # noqa: S105 - a public prefix, not a secret
# No 0/O/o, 1/l/I: generated passwords are read off a terminal and typed in by people.
PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"  # noqa: S105
MIN_GENERATED_PASSWORD_LENGTH = 12

# The secret part is token_urlsafe(32) (43 characters); a little slack on either side keeps tokens
# of a future length parseable while still rejecting obvious garbage before touching the database.
_API_TOKEN = re.compile(r"myx_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})", re.ASCII)

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An Argon2id hash (PHC string, salt and parameters included) of *password*."""
    if not password:
        raise InvalidInput("the password must not be empty")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when *password* matches; False on a mismatch or a hash that cannot be read.

    Never raises for a wrong password: login code should have one failure path, not two.
    """
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):  # VerifyMismatchError is a VerificationError
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when *password_hash* was made with weaker parameters than today's: re-hash at login."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def generate_password(length: int = 20) -> str:
    """A random password from an unambiguous alphabet (20 characters: about 116 bits)."""
    if length < MIN_GENERATED_PASSWORD_LENGTH:
        raise InvalidInput(
            f"a generated password must be at least {MIN_GENERATED_PASSWORD_LENGTH} characters long"
        )
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def hash_token_secret(secret: str) -> str:
    """The stored form of an API token's secret: lowercase SHA-256 hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_api_token() -> tuple[str, str, str]:
    """A new API token as ``(token_id, full_token, secret_hash)``.

    Store ``token_id`` and ``secret_hash``; show ``full_token`` to the user once and forget it.
    """
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{API_TOKEN_PREFIX}{token_id}_{secret}", hash_token_secret(secret)


def parse_api_token(full: str) -> tuple[str, str] | None:
    """``(token_id, secret)`` from a full token, or None for anything that is not one.

    Tolerates surrounding whitespace (tokens get pasted with a trailing newline); everything else
    that does not match the format exactly is None, so callers answer "unauthenticated" without
    a database lookup.
    """
    match = _API_TOKEN.fullmatch(full.strip())
    if match is None:
        return None
    return match.group(1), match.group(2)


def token_matches(secret: str, secret_hash: str) -> bool:
    """True when *secret* hashes to *secret_hash*, compared in constant time."""
    # Bytes, not str: compare_digest raises TypeError on non-ASCII str, and a corrupt stored hash
    # must mean "no match", not a crash.
    computed = hash_token_secret(secret).encode("ascii")
    return hmac.compare_digest(computed, secret_hash.encode("utf-8", "surrogatepass"))


def random_rpc_path() -> str:
    """An agent's RPC path (seed 001: 16-32 random characters): 24 of ``[A-Za-z0-9_-]``, 144 bits."""
    return secrets.token_urlsafe(18)


def random_agent_token() -> str:
    """An agent's ``agent_token`` (the ``X-Agent-Token`` header): 48 URL-safe characters, 288 bits."""
    return secrets.token_urlsafe(36)


def random_agent_secret() -> str:
    """An agent's ``secret_key`` (seed 001, assigned by the control server): 43 characters, 256 bits."""
    return secrets.token_urlsafe(32)
