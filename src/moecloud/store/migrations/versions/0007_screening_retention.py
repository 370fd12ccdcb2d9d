"""Screening policies per tenant and key; the audit chain's anchor after a retention purge.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tenants') as batch:
        batch.add_column(sa.Column('screening_policy', sa.Text(), nullable=True))
    with op.batch_alter_table('api_keys') as batch:
        batch.add_column(sa.Column('screening_policy', sa.Text(), nullable=True))
    op.create_table(
        'audit_anchor',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('through_id', sa.Integer(), nullable=False),
        sa.Column('through_digest', sa.String(length=64), nullable=False),
        sa.Column('purged_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('audit_anchor')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('screening_policy')
    with op.batch_alter_table('tenants') as batch:
        batch.drop_column('screening_policy')
