"""Serving the API with uvicorn: the exposure rule, and a server in a thread for ``up``.

Bound to a loopback address the API may run without tokens. Bound to any other address it
refuses to start until a token exists, unless ``--insecure`` says otherwise (logged loudly).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any

import uvicorn

from ..client import Client
from ..errors import ConfigurationError

log = logging.getLogger("legato.api")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def require_auth(client: Client, host: str, insecure: bool) -> bool:
    """Whether every route must demand a token even while none exists.

    Raises :class:`ConfigurationError` for an exposed address without tokens (and no
    ``insecure``).
    """
    if is_loopback(host):
        return False
    if client.tokens_exist():
        return True
    if insecure:
        log.warning(
            "INSECURE: serving the API on %s WITHOUT AUTHENTICATION: anyone who can reach this "
            "address can read every run and submit, cancel and retry runs",
            host,
        )
        return False
    raise ConfigurationError(
        f"refusing to serve the API on {host} without authentication: no API token exists. "
        "Create one with `legato tokens create --name admin --role admin`, bind to "
        "127.0.0.1, or pass --insecure"
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or :class:`ConfigurationError` (one clear line)
    when the address is taken or cannot be assigned."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigurationError(f"cannot serve the API on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, host: str, port: int, *, log_level: str = "info") -> uvicorn.Server:
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False
    )
    return uvicorn.Server(config)


class ServerThread:
    """A uvicorn server running in a daemon thread (for ``legato up``)."""

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; raise :class:`ConfigurationError` if it cannot (port in use)."""
        config = self.server.config
        sock = bind(config.host, config.port)  # fails here, as one clear line
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="legato-api", daemon=True
        )
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.02)
            timeout -= 0.02
            if not self.thread.is_alive() or timeout <= 0:
                raise ConfigurationError(f"cannot serve the API on {config.host}:{config.port}")

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
