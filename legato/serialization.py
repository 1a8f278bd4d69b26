"""JSON encoding of parameters and results. Never pickle: stored data cannot execute code.

Dataclasses and pydantic models are encoded as JSON objects; ``datetime``/``date`` as ISO
strings; tuples and sets as lists. Anything else is refused with a :class:`SerializationError`.
When a flow or step is annotated with a dataclass or pydantic model, decoded values are
turned back into that type (see :func:`revive`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from .errors import PayloadTooLarge, SerializationError


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # pydantic v2
        return model_dump(mode="json")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any, *, what: str = "value", limit: int | None = None) -> str:
    """Encode ``value`` as compact JSON, or raise :class:`SerializationError`."""
    try:
        text = json.dumps(value, default=_default, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} cannot be stored as JSON: {exc}") from None
    if limit is not None and len(text.encode()) > limit:
        raise PayloadTooLarge(
            f"{what} is {len(text.encode())} bytes of JSON, over the {limit}-byte limit"
        )
    return text


def storable_text(text: str) -> str:
    """``text`` without what databases refuse in a text column: NUL characters (PostgreSQL)
    and lone surrogates (not UTF-8), replaced (by U+FFFD and "?")."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def loads(text: str | None) -> Any:
    """Decode JSON text (``None`` stays ``None``)."""
    return None if text is None else json.loads(text)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and (
        dataclasses.is_dataclass(tp) or callable(getattr(tp, "model_validate", None))
    )


def revive(value: Any, tp: Any) -> Any:
    """Turn decoded JSON back into ``tp`` when it is a dataclass or pydantic model."""
    if value is None or not _is_model(tp):
        return value
    if isinstance(value, tp):
        return value
    validate = getattr(tp, "model_validate", None)
    if callable(validate):
        return validate(value)
    if isinstance(value, dict):
        return tp(**value)
    return value


def type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The function's resolved annotations, or an empty dict if they cannot be resolved."""
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {}
