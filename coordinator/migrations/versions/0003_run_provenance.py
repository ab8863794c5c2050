"""run provenance: each site's rows, fingerprints and agent version frozen per run, and the
run's pinned data schema

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_schema", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "run_sites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.String(length=36), nullable=False),
        sa.Column("site_name", sa.String(length=128), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("data_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("schema_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("agent_version", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "node_id"),
    )
    with op.batch_alter_table("run_sites", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_sites_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_sites", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_sites_run_id"))
    op.drop_table("run_sites")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("data_schema")
