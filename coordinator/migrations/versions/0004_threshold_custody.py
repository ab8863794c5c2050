"""threshold custody: verification keys, the custodian's statement, sealed partials

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "threshold_keys",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("parties", sa.Integer(), nullable=False),
        sa.Column("verification_keys", sa.LargeBinary(), nullable=False),
        sa.Column("statement", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_table(
        "threshold_partials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=36), nullable=False),
        sa.Column("site_name", sa.String(length=128), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "round", "node_id", "part"),
    )
    with op.batch_alter_table("threshold_partials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_threshold_partials_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("threshold_partials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_threshold_partials_run_id"))
    op.drop_table("threshold_partials")
    op.drop_table("threshold_keys")
