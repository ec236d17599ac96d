"""Alembic environment for the state database; run by ``unlearn_lib.state.store.migrate``."""

from alembic import context
from sqlalchemy import text

from unlearn_lib.state.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Two processes opening a fresh database at once: one migrates, the other waits.
        connection.execute(text("SELECT pg_advisory_xact_lock(726501)"))
    context.run_migrations()
