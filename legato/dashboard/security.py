"""Who is looking at the dashboard, and proof that a form was sent by the dashboard itself.

The dashboard follows the API's rule: a server on a loopback address without any API token is
open; once a token exists (or the server is exposed beyond loopback) every page needs a login.
Logging in means pasting an API token: the dashboard checks it once and gives the browser a
**session cookie** naming the token and an expiry, signed with HMAC-SHA256 under a server
secret (``$LEGATO_DASHBOARD_SECRET``, else random per process: sessions then end when the
server restarts). The token itself is never stored in the cookie. On every request the token
is looked up again, so revoking it ends its sessions, and its role (viewer, operator, admin)
decides what the page offers: a viewer sees everything and can act on nothing.

**CSRF**: every form and action carries a token derived (HMAC) from a random per-browser
cookie and the session; a ``POST`` whose token does not match, or whose ``Origin`` is another
site, is refused. Cookies are ``HttpOnly`` and ``SameSite=Lax`` (``Secure`` over HTTPS).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..client import Client
from ..tokens import ROLES, allows

SESSION_COOKIE = "legato_session"
CSRF_COOKIE = "legato_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600


def server_secret() -> bytes:
    """The key that signs sessions and CSRF tokens."""
    configured = os.environ.get("LEGATO_DASHBOARD_SECRET")
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    return secrets.token_bytes(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, purpose: str, value: str) -> str:
    return _b64(hmac.new(secret, f"{purpose}|{value}".encode(), hashlib.sha256).digest())


def make_session(secret: bytes, token_id: str, now: float | None = None) -> str:
    """A signed cookie value naming the token and when the session ends."""
    expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
    payload = _b64(json.dumps({"t": token_id, "exp": expires}, separators=(",", ":")).encode())
    return f"{payload}.{_sign(secret, 'session', payload)}"


def read_session(secret: bytes, value: str | None, now: float | None = None) -> str | None:
    """The token id of a valid, unexpired session cookie, else ``None``."""
    if not value or "." not in value or len(value) > 1000:
        return None
    payload, _, signature = value.partition(".")
    if not hmac.compare_digest(signature, _sign(secret, "session", payload)):
        return None
    try:
        data = json.loads(_unb64(payload))
        token_id, expires = data["t"], data["exp"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(token_id, str) or not isinstance(expires, int):
        return None
    if expires < (now if now is not None else time.time()):
        return None
    return token_id


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a token's name and role, or ``anonymous`` on an open dashboard."""

    name: str
    role: str
    auth_enabled: bool
    csrf_token: str
    csrf_nonce: str
    new_nonce: bool

    def can(self, role: str) -> bool:
        return allows(self.role, role)

    @property
    def can_operate(self) -> bool:
        return self.can("operator")


class LoginRequired(Exception):
    """The page needs a login (tokens exist, or the server is exposed)."""


class Forbidden(Exception):
    """The viewer's role may not do this, or the form's CSRF token is wrong."""


def csrf_token(secret: bytes, nonce: str, session: str | None) -> str:
    return _sign(secret, "csrf", f"{nonce}|{session or ''}")


def auth_enabled(request: Request) -> bool:
    client: Client = request.app.state.client
    return bool(request.app.state.require_auth) or client.tokens_exist()


def identify(request: Request, *, required: bool = True) -> Viewer:
    """Who sent ``request`` (blocking: it may read the token table).

    Raises :class:`LoginRequired` when a login is needed and ``required``.
    """
    secret: bytes = request.app.state.dashboard_secret
    nonce = request.cookies.get(CSRF_COOKIE, "")
    new_nonce = not (16 <= len(nonce) <= 100 and nonce.replace("-", "").replace("_", "").isalnum())
    if new_nonce:
        nonce = secrets.token_urlsafe(24)
    session = request.cookies.get(SESSION_COOKIE)
    token = csrf_token(secret, nonce, session)
    if not auth_enabled(request):
        return Viewer("anonymous", ROLES[-1], False, token, nonce, new_nonce)
    token_id = read_session(secret, session)
    if token_id is not None:
        client: Client = request.app.state.client
        found = [r for r in client.store.find_active_tokens(token_id) if r["id"] == token_id]
        if found:
            row = found[0]
            return Viewer(row["name"], row["role"], True, token, nonce, new_nonce)
    if required:
        raise LoginRequired
    return Viewer("", "", True, csrf_token(secret, nonce, None), nonce, new_nonce)


def check_csrf(request: Request, viewer: Viewer, submitted: str | None) -> None:
    """Refuse a state-changing request that the dashboard did not send."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        expected = f"{request.url.scheme}://{request.url.netloc}"
        if origin.rstrip("/") != expected:
            raise Forbidden(f"this form was sent from another site ({origin})")
    submitted = submitted or request.headers.get(CSRF_HEADER)
    if (
        viewer.new_nonce
        or not submitted
        or not hmac.compare_digest(submitted.encode(), viewer.csrf_token.encode())
    ):
        raise Forbidden(
            "this form has expired or was not sent by the dashboard: reload the page and try again"
        )


def remember_nonce(request: Request, response: Response, viewer: Viewer) -> None:
    """Give a new browser its CSRF cookie."""
    if viewer.new_nonce:
        response.set_cookie(
            CSRF_COOKIE,
            viewer.csrf_nonce,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )


def start_session(request: Request, response: Response, token_id: str) -> None:
    secret: bytes = request.app.state.dashboard_secret
    response.set_cookie(
        SESSION_COOKIE,
        make_session(secret, token_id),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def safe_next(target: str | None) -> str:
    """Only redirect to a path of this site after a login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def principal_json(viewer: Viewer) -> dict[str, Any]:
    return {"name": viewer.name, "role": viewer.role}
