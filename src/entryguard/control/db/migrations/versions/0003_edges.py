"""edges: the registry of edges that follow the change stream

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "edges",
        sa.Column("id", big_id, primary_key=True),
        sa.Column(
            "token_id",
            big_id,
            sa.ForeignKey("edge_tokens.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("instance", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("replica", sa.String(128), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("health", sa.String(32), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("token_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("edges")
