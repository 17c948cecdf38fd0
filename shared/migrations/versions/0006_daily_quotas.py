"""daily quotas counted in the database, with the rows they pay for

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Counts kept in Redis until now are not carried over: each user's window starts
    # afresh at the first use after the deploy (at most one extra day's quota).
    op.create_table('daily_quotas',
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('user_id', 'kind')
    )


def downgrade() -> None:
    op.drop_table('daily_quotas')
