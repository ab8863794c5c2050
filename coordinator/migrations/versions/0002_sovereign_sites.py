"""sovereign sites: identities, run participants and key statements, signed updates,
refusals, token expiry and revocation

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 04:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "ed25519_public_key", sa.LargeBinary(), nullable=False, server_default=sa.text("''")
            )
        )
        batch_op.add_column(
            sa.Column(
                "x25519_signature", sa.LargeBinary(), nullable=False, server_default=sa.text("''")
            )
        )
        batch_op.add_column(
            sa.Column("token_expires_at", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("revoked_at", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("participants", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(
            sa.Column(
                "key_statement", sa.LargeBinary(), nullable=False, server_default=sa.text("''")
            )
        )
        batch_op.add_column(
            sa.Column(
                "key_statement_signature",
                sa.LargeBinary(),
                nullable=False,
                server_default=sa.text("''"),
            )
        )
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("signature", sa.LargeBinary(), nullable=False, server_default=sa.text("''"))
        )
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("revoked_at", sa.Float(), nullable=False, server_default="0"))
    op.create_table(
        "site_refusals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("site_refusals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_site_refusals_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("site_refusals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_site_refusals_run_id"))
    op.drop_table("site_refusals")
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("expires_at")
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.drop_column("signature")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("key_statement_signature")
        batch_op.drop_column("key_statement")
        batch_op.drop_column("participants")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("token_expires_at")
        batch_op.drop_column("x25519_signature")
        batch_op.drop_column("ed25519_public_key")
