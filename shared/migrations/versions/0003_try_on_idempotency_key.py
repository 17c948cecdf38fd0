"""try-on idempotency key

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('try_ons', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=64), nullable=True))
        batch_op.create_index('ux_try_ons_user_idempotency', ['user_id', 'idempotency_key'], unique=True)



def downgrade() -> None:
    with op.batch_alter_table('try_ons', schema=None) as batch_op:
        batch_op.drop_index('ux_try_ons_user_idempotency')
        batch_op.drop_column('idempotency_key')

