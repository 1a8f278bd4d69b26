"""The served OpenAPI document against the API: no 5xx, answers match the schema.

Every operation gets a bounded number of generated requests (valid ones, then invalid
ones), sent with an admin token over seeded data while a real worker runs, so runs created
by the fuzzer (retries) end and their log streams close.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from legato import App
from legato.api import create_app
from legato.client import Client
from legato.config import Settings
from tests.helpers import in_process_worker

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]


@pytest.fixture
def fuzzed(db_url: str) -> Iterator[tuple[schemathesis.BaseSchema, dict[str, str]]]:
    app = App(db_url)

    @app.step
    def double(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * 2

    @app.flow(schedule="0 23 L * *")
    def fuzz_target(n: int = 1) -> int:
        print("doubling", n)
        return double(n)

    with in_process_worker(app, concurrency=2):
        fuzz_target.submit(2).result(timeout=30)
        handle = fuzz_target.submit(-1)
        handle.wait(timeout=30)
        token = Client(app.store).create_token("fuzzer", "admin")["token"]
        api = create_app(app.store, Settings.from_env(), stream_poll_seconds=0.05)
        schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", api)
        yield schema, {"Authorization": f"Bearer {token}"}
    app.close()


def test_every_operation_matches_the_openapi_document(
    fuzzed: tuple[schemathesis.BaseSchema, dict[str, str]],
) -> None:
    schema, headers = fuzzed
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = (
                [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
            )

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, checks=checks)  # noqa: B023 (called at once)

            try:
                check()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid input to send.
                assert mode is GenerationMode.NEGATIVE, operation.label
