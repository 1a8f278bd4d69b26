"""Fixtures of the REST API tests: the app over a fresh store, tokens per role, a real
uvicorn server for streaming."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator

import pytest

from legato.api import create_app
from legato.client import Client
from legato.config import Settings
from legato.store import Store
from legato.tokens import ROLES

with warnings.catch_warnings():
    # Starlette suggests httpx2 for its test client; httpx is what the project pins.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

Headers = dict[str, str]


@pytest.fixture
def api(store: Store) -> Iterator[TestClient]:
    """The API over the test's store, open (no token yet, loopback)."""
    with TestClient(create_app(store, Settings.from_env())) as client:
        yield client


@pytest.fixture
def tokens(store: Store) -> dict[str, Headers]:
    """One token per role, as request headers; from now on every route needs one."""
    client = Client(store)
    return {
        role: {"Authorization": f"Bearer {client.create_token(f'{role}-test', role)['token']}"}
        for role in ROLES
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
