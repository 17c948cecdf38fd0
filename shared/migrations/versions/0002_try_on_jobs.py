"""try-on jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('try_ons',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('upload_id', sa.String(length=36), nullable=False),
    sa.Column('hairstyle_id', sa.String(length=64), nullable=False),
    sa.Column('user_prompt', sa.String(length=500), nullable=True),
    sa.Column('locale', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('fal_request_id', sa.String(length=128), nullable=True),
    sa.Column('first_submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('source_sha256', sa.String(length=64), nullable=True),
    sa.Column('result_key', sa.String(length=255), nullable=True),
    sa.Column('thumbnail_key', sa.String(length=255), nullable=True),
    sa.Column('result_sha256', sa.String(length=64), nullable=True),
    sa.Column('result_width', sa.Integer(), nullable=True),
    sa.Column('result_height', sa.Integer(), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('favorite', sa.Boolean(), nullable=False),
    sa.Column('delete_after', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('try_ons', schema=None) as batch_op:
        batch_op.create_index('ix_try_ons_status', ['status'], unique=False)
        batch_op.create_index('ix_try_ons_upload', ['upload_id'], unique=False)
        batch_op.create_index('ix_try_ons_user_created', ['user_id', 'created_at', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('try_ons', schema=None) as batch_op:
        batch_op.drop_index('ix_try_ons_user_created')
        batch_op.drop_index('ix_try_ons_upload')
        batch_op.drop_index('ix_try_ons_status')

    op.drop_table('try_ons')
