"""What routes share: the client, parameter types, time parsing and JSON answers."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from ..client import Client
from ..timeutil import parse_duration, parse_iso, to_ms
from .models import NO_NUL


def get_client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


ClientDep = Annotated[Client, Depends(get_client)]

RunId = Annotated[
    str,
    Path(min_length=1, max_length=200, pattern=NO_NUL, description="A run id or unique prefix."),
]
FlowName = Annotated[
    str, Path(min_length=1, max_length=200, pattern=NO_NUL, description="A flow name.")
]
TokenId = Annotated[
    str, Path(min_length=1, max_length=200, pattern=NO_NUL, description="A token id or name.")
]


def text_query(description: str) -> Any:
    """A free-text query parameter (a flow name, a queue...)."""
    return Query(min_length=1, max_length=200, pattern=NO_NUL, description=description)


def time_query(description: str) -> Any:
    return Query(
        min_length=1,
        max_length=64,
        pattern=NO_NUL,
        description=description + " A duration ago (30s, 5m, 2h, 1d) or an ISO 8601 time.",
        examples=["5m"],
    )


def parse_time(client: Client, value: str, name: str, *, forward: bool = False) -> int:
    """A time given as a duration (``5m`` ago, or from now with ``forward``) or an ISO 8601
    time, in epoch milliseconds."""
    ms: int | None = None
    try:
        delta = int(parse_duration(value).total_seconds() * 1000)
        ms = client.store.now_ms() + (delta if forward else -delta)
    except (ValueError, OverflowError):
        with contextlib.suppress(ValueError, OverflowError):
            ms = to_ms(parse_iso(value))
    if ms is None:
        raise ValueError(
            f"invalid {name} {value!r}: use a duration (30s, 5m, 2h, 1d) or an ISO 8601 time"
        )
    if not -(2**62) < ms < 2**62:
        raise ValueError(f"invalid {name} {value!r}: out of range")
    return ms


class JSON(JSONResponse):
    """JSON answers; encoded once, from what the client returned (no re-validation)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def answer(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSON:
    return JSON(content, status_code=status_code, headers=headers)
