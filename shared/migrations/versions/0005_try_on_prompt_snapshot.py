"""the prompt a try-on runs with, stored when it is accepted

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows keep NULL: they fall back to the catalogue when they run (and
    # fail with tryon.hairstyle_retired if their style is gone), never strand.
    with op.batch_alter_table('try_ons', schema=None) as batch_op:
        batch_op.add_column(sa.Column('composed_prompt', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('try_ons', schema=None) as batch_op:
        batch_op.drop_column('composed_prompt')
