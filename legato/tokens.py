"""API tokens: generation, hashing and roles.

A token is ``lgt_`` followed by 32 random bytes (``secrets.token_urlsafe``). Only its SHA-256
is stored, so a database dump does not reveal a usable token; with that much entropy a
plain hash is enough (no salt or slow hash needed). Tokens are shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "lgt_"
#: Roles from least to most privileged; each role may do everything the previous ones may.
ROLES = ("viewer", "operator", "admin")


def generate() -> str:
    """A new high-entropy token."""
    return PREFIX + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(6)


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def matches(token: str, token_hash: str) -> bool:
    """Compare a presented token with a stored hash in constant time."""
    return hmac.compare_digest(hash_token(token), token_hash)


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)
