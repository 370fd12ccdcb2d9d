"""Deployments grow replicas, scaling bounds, a provider key variable and a serving cost; keys get a
priority tier and tenants a fair-share weight.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.alter_column('base_url', existing_type=sa.Text(), nullable=True)
        batch.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='remote'))
        batch.add_column(sa.Column('checkpoint', sa.Text(), nullable=True))
        batch.add_column(sa.Column('replicas', sa.Integer(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('min_replicas', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('max_replicas', sa.Integer(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('max_concurrency', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('api_key_env', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('cost_input', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('cost_output', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('api_keys') as batch:
        batch.add_column(sa.Column('priority', sa.Integer(), nullable=True))
    with op.batch_alter_table('tenants') as batch:
        batch.add_column(sa.Column('weight', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('tenants') as batch:
        batch.drop_column('weight')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('priority')
    with op.batch_alter_table('deployments') as batch:
        for column in ('cost_output', 'cost_input', 'api_key_env', 'max_concurrency', 'max_replicas',
                       'min_replicas', 'replicas', 'checkpoint', 'kind'):
            batch.drop_column(column)
        batch.alter_column('base_url', existing_type=sa.Text(), nullable=False)
