"""Targets, tags, sealed credentials, health history, outbox and processed events.

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
        "targets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("name_key", sa.String(128), nullable=False),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("os", sa.String(64), nullable=True),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("winrm_transport", sa.String(8), nullable=True),
        sa.Column("winrm_scheme", sa.String(8), nullable=True),
        sa.Column("winrm_verify_tls", sa.Boolean(), nullable=True),
        sa.Column("credential_type", sa.String(16), nullable=True),
        sa.Column("credential_version", sa.Integer(), nullable=False),
        sa.Column("credential_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("host_key_fingerprint", sa.String(64), nullable=True),
        sa.Column("host_key", sa.Text(), nullable=True),
        sa.Column("host_key_pinned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("presented_fingerprint", sa.String(64), nullable=True),
        sa.Column("presented_host_key", sa.Text(), nullable=True),
        sa.Column("presented_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_check_stage", sa.String(16), nullable=True),
        sa.Column("last_check_message", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_targets"),
        sa.UniqueConstraint("name_key", name="uq_targets_name_key"),
    )
    op.create_index("ix_targets_created_at_id", "targets", ["created_at", "id"])
    op.create_index("ix_targets_status", "targets", ["status"])
    op.create_table(
        "target_tags",
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["target_id"], ["targets.id"], name="fk_target_tags_target_id",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("target_id", "tag", name="pk_target_tags"),
    )
    op.create_index("ix_target_tags_tag", "target_tags", ["tag"])
    op.create_table(
        "credentials",
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["target_id"], ["targets.id"], name="fk_credentials_target_id",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("target_id", name="pk_credentials"),
    )
    op.create_index("ix_credentials_key_id", "credentials", ["key_id"])
    op.create_table(
        "target_health",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("message", sa.String(500), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(["target_id"], ["targets.id"], name="fk_target_health_target_id",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_target_health"),
    )
    op.create_index("ix_target_health_target_checked", "target_health",
                    ["target_id", "checked_at", "id"])
    create_outbox_tables(op)


def downgrade() -> None:
    op.drop_table("processed_events")
    op.drop_table("outbox")
    op.drop_index("ix_target_health_target_checked", table_name="target_health")
    op.drop_table("target_health")
    op.drop_index("ix_credentials_key_id", table_name="credentials")
    op.drop_table("credentials")
    op.drop_index("ix_target_tags_tag", table_name="target_tags")
    op.drop_table("target_tags")
    op.drop_index("ix_targets_status", table_name="targets")
    op.drop_index("ix_targets_created_at_id", table_name="targets")
    op.drop_table("targets")
