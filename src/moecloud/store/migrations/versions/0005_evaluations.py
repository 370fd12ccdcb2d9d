"""Evaluations run from the admin API: their request, status, per-model results and HTML report.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.Column('examples', sa.Integer(), nullable=False),
    sa.Column('key_public_id', sa.String(length=32), nullable=False),
    sa.Column('results', sa.Text(), nullable=True),
    sa.Column('recommended', sa.String(length=200), nullable=True),
    sa.Column('alias', sa.String(length=200), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('report', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('public_id')
    )
    op.create_index('ix_evaluations_status', 'evaluations', ['status'])


def downgrade() -> None:
    op.drop_index('ix_evaluations_status', table_name='evaluations')
    op.drop_table('evaluations')
