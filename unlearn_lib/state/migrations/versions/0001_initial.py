"""Requests, runs, leases and the event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("basis", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_json", sa.Text, nullable=False),
        _ts("received_at", nullable=False),
        _ts("deadline_at"),
        _ts("submitted_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("done_at"),
        sa.Column("reason", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("retryable", sa.Boolean),
        sa.Column("run_id", sa.String(64)),
        sa.Column("version", sa.String(32)),
        sa.Column("evidence_json", sa.Text),
    )
    op.create_index("ix_requests_model", "requests", ["model"])
    op.create_index("ix_requests_state", "requests", ["state"])
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("request_ids", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("runner", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("lineage_run_id", sa.String(64)),
        sa.Column("config_json", sa.Text, nullable=False),
        sa.Column("steps_json", sa.Text, nullable=False),
        sa.Column("parent_version", sa.String(32)),
        sa.Column("dataset_rev", sa.String(64)),
        sa.Column("purged_rev", sa.String(64)),
        sa.Column("forget_set_sha256", sa.String(64)),
        sa.Column("committing", sa.Boolean, nullable=False),
        sa.Column("verdict", sa.String(16)),
        sa.Column("version", sa.String(32)),
        sa.Column("failed_step", sa.String(32)),
        sa.Column("error", sa.Text),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("ended_at"),
    )
    op.create_index("ix_runs_model", "runs", ["model"])
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_index("ix_runs_lineage_run_id", "runs", ["lineage_run_id"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(300), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(300), nullable=False),
        _ts("acquired_at", nullable=False),
        _ts("expires_at", nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _ts("at", nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("run_id", sa.String(64)),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_events_request_id", "events", ["request_id"])
    op.create_index("ix_events_run_id", "events", ["run_id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("leases")
    op.drop_table("runs")
    op.drop_table("requests")
