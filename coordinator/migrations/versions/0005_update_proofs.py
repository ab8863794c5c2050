"""update proofs: each secure update's proof of plaintext knowledge, relayed in manifests

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("plaintext_proof", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("plaintext_proof")
