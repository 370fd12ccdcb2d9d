"""A local deployment's replicas run as worker processes or as Ray Serve applications.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('backend', sa.String(length=16), nullable=False, server_default='process'))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('backend')
