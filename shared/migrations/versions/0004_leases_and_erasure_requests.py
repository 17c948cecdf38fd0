"""leases for try-ons and validations, result tag state, erasure requests

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# Failed jobs had no deadline; they get the default result retention from the time
# they failed (RESULT_RETENTION_DAYS' default; the beat applies the setting from now on).
FAILED_JOB_RETENTION = timedelta(days=7)


def upgrade() -> None:
    with op.batch_alter_table('try_ons', schema=None) as batch_op:
        batch_op.add_column(sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('fal_failures', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('result_tags', sa.String(length=16), nullable=True))
        batch_op.create_index('ix_try_ons_due', ['status', 'due_at'], unique=False)
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('validation_owner', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('validation_lease_until', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('validation_crashes', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.create_index('ix_uploads_validation_lease', ['status', 'validation_lease_until'],
                              unique=False)
    op.create_table('erasure_requests',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('runs', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=64), nullable=True),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id')
    )
    with op.batch_alter_table('erasure_requests', schema=None) as batch_op:
        batch_op.create_index('ix_erasure_status_lease', ['status', 'lease_until'], unique=False)
    _backfill()


def _backfill() -> None:
    """Existing rows in the new terms: every failed job gets a deadline; results
    written before are tagged `temporary` unless favorited, so only favorites are
    re-synced; jobs in flight are due at once (the reconciler looks at them)."""
    conn = op.get_bind()
    jobs = sa.table('try_ons', sa.column('id'), sa.column('status'), sa.column('favorite'),
                    sa.column('completed_at', sa.DateTime(timezone=True)),
                    sa.column('updated_at', sa.DateTime(timezone=True)),
                    sa.column('delete_after', sa.DateTime(timezone=True)),
                    sa.column('result_tags'), sa.column('due_at', sa.DateTime(timezone=True)))
    failed = conn.execute(sa.select(jobs.c.id, jobs.c.completed_at, jobs.c.updated_at).where(
        jobs.c.status == 'failed', jobs.c.delete_after.is_(None))).all()
    for job_id, completed_at, updated_at in failed:
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(
            delete_after=(completed_at or updated_at) + FAILED_JOB_RETENTION))
    conn.execute(jobs.update().where(jobs.c.status == 'succeeded', jobs.c.favorite.is_(False))
                 .values(result_tags='temporary'))
    conn.execute(jobs.update().where(jobs.c.status.in_(('queued', 'processing')))
                 .values(due_at=jobs.c.updated_at))


def downgrade() -> None:
    with op.batch_alter_table('erasure_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_erasure_status_lease')
    op.drop_table('erasure_requests')
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_index('ix_uploads_validation_lease')
        batch_op.drop_column('validation_crashes')
        batch_op.drop_column('validation_lease_until')
        batch_op.drop_column('validation_owner')
    with op.batch_alter_table('try_ons', schema=None) as batch_op:
        batch_op.drop_index('ix_try_ons_due')
        batch_op.drop_column('result_tags')
        batch_op.drop_column('fal_failures')
        batch_op.drop_column('due_at')
