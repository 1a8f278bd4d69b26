from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pydantic
import pytest

from legato.errors import PayloadTooLarge, SerializationError
from legato.serialization import dumps, loads, revive


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Order(pydantic.BaseModel):
    id: int
    items: list[str]


def test_dataclasses_models_and_datetimes_are_json() -> None:
    text = dumps(
        {"p": Point(1, 2), "o": Order(id=3, items=["a"]), "t": datetime(2026, 1, 1, tzinfo=UTC)}
    )
    assert loads(text) == {
        "p": {"x": 1, "y": 2},
        "o": {"id": 3, "items": ["a"]},
        "t": "2026-01-01T00:00:00+00:00",
    }


def test_other_objects_are_refused_with_a_clear_error() -> None:
    with pytest.raises(
        SerializationError, match="parameters cannot be stored as JSON: object of type object"
    ):
        dumps({"x": object()}, what="parameters")
    with pytest.raises(SerializationError):
        dumps(float("nan"))


def test_payload_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="over the 10-byte limit"):
        dumps("x" * 20, limit=10)


def test_revive_builds_annotated_types() -> None:
    assert revive({"x": 1, "y": 2}, Point) == Point(1, 2)
    assert revive({"id": 1, "items": []}, Order) == Order(id=1, items=[])
    assert revive({"a": 1}, dict) == {"a": 1}
    assert revive(None, Point) is None
