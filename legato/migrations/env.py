"""Alembic environment: migrations run on a connection handed over by :mod:`legato.store.migrate`."""

from __future__ import annotations

from alembic import context

from legato.store.schema import metadata

connection = context.config.attributes["connection"]
schema = context.config.attributes.get("schema")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=schema,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
