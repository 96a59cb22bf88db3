"""change-log batches: the rows one transaction wrote share a batch number

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this migration have no batch: readers treat each as its own.
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_column("batch")
