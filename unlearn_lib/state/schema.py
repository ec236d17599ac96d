"""Tables of the state database: deletion requests, compliance runs, leases, and an event log.

The schema is owned by the Alembic migrations beside this module (``migrations/``); these
table objects are what the code queries with. A change here needs a new migration.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, String, Table, Text

metadata = MetaData()


def _ts(name: str, nullable: bool = True) -> Column:
    return Column(name, DateTime(timezone=True), nullable=nullable)


requests = Table(
    "requests",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("model", String(256), nullable=False, index=True),
    Column("basis", String(32), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("request_json", Text, nullable=False),
    _ts("received_at", nullable=False),
    _ts("deadline_at"),
    _ts("submitted_at", nullable=False),
    _ts("updated_at", nullable=False),
    _ts("done_at"),
    Column("reason", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("retryable", Boolean),
    Column("run_id", String(64)),
    Column("version", String(32)),
    Column("evidence_json", Text),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("model", String(256), nullable=False, index=True),
    Column("batch_id", String(64), nullable=False),
    Column("request_ids", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("runner", String(32), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("lineage_run_id", String(64), index=True),
    Column("config_json", Text, nullable=False),
    Column("steps_json", Text, nullable=False, default="{}"),
    Column("parent_version", String(32)),
    Column("dataset_rev", String(64)),
    Column("purged_rev", String(64)),
    Column("forget_set_sha256", String(64)),
    Column("committing", Boolean, nullable=False, default=False),
    Column("verdict", String(16)),
    Column("version", String(32)),
    Column("failed_step", String(32)),
    Column("error", Text),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    _ts("ended_at"),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(300), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("holder", String(300), nullable=False),
    _ts("acquired_at", nullable=False),
    _ts("expires_at", nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _ts("at", nullable=False),
    Column("request_id", String(128), index=True),
    Column("run_id", String(64), index=True),
    Column("kind", String(32), nullable=False),
    Column("detail", Text),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timestamps back without their zone; everything stored here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.timezone.utc)
