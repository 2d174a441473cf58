"""Executions, their targets, the ordered stream records, sealed secret values, outbox and
processed events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from opsconductor_runtime.outbox import create_outbox_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("job_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("retry_of", sa.Uuid(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("secret_names", sa.Text(), nullable=False),
        sa.Column("total_targets", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner", sa.String(100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("cancel_requested_by", sa.String(128), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_executions"),
        sa.UniqueConstraint("idempotency_key", name="uq_executions_idempotency_key"),
    )
    op.create_index("ix_executions_created_at_id", "executions", ["created_at", "id"])
    op.create_index("ix_executions_job_id", "executions", ["job_id"])
    op.create_index("ix_executions_status_lease", "executions", ["status", "lease_until"])
    op.create_table(
        "execution_targets",
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.Column("output_truncated", sa.Boolean(), nullable=False),
        sa.Column("inflight_step", sa.Integer(), nullable=True),
        sa.Column("next_step", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"],
                                name="fk_execution_targets_execution_id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("execution_id", "target_id", name="pk_execution_targets"),
    )
    op.create_index("ix_execution_targets_position", "execution_targets",
                    ["execution_id", "position"])
    op.create_table(
        "execution_records",
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=True),
        sa.Column("stream", sa.String(8), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"],
                                name="fk_execution_records_execution_id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("execution_id", "seq", name="pk_execution_records"),
    )
    op.create_index("ix_execution_records_target", "execution_records",
                    ["execution_id", "target_id", "seq"])
    op.create_table(
        "execution_secrets",
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"],
                                name="fk_execution_secrets_execution_id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("execution_id", name="pk_execution_secrets"),
    )
    create_outbox_tables(op)


def downgrade() -> None:
    op.drop_table("processed_events")
    op.drop_table("outbox")
    op.drop_table("execution_secrets")
    op.drop_index("ix_execution_records_target", table_name="execution_records")
    op.drop_table("execution_records")
    op.drop_index("ix_execution_targets_position", table_name="execution_targets")
    op.drop_table("execution_targets")
    op.drop_index("ix_executions_status_lease", table_name="executions")
    op.drop_index("ix_executions_job_id", table_name="executions")
    op.drop_index("ix_executions_created_at_id", table_name="executions")
    op.drop_table("executions")
