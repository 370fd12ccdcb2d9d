"""The console: sign-in sessions, and usage summed per day, tenant, key and model (filled from what exists).

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'usage_daily',
        sa.Column('day', sa.String(length=10), nullable=False),
        sa.Column('tenant_id', sa.Integer(), nullable=False),
        sa.Column('key_id', sa.Integer(), nullable=False),
        sa.Column('model', sa.String(length=200), nullable=False),
        sa.Column('requests', sa.Integer(), nullable=False),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('cached_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('cost', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id']),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id']),
        sa.PrimaryKeyConstraint('day', 'tenant_id', 'key_id', 'model'),
    )
    op.create_index('ix_usage_daily_tenant_day', 'usage_daily', ['tenant_id', 'day'])
    op.execute(
        "INSERT INTO usage_daily (day, tenant_id, key_id, model, requests, prompt_tokens, cached_tokens,"
        " completion_tokens, cost)"
        " SELECT day, tenant_id, key_id, model, count(*), sum(prompt_tokens), sum(cached_tokens),"
        " sum(completion_tokens), sum(cost) FROM usage GROUP BY day, tenant_id, key_id, model"
    )
    op.create_table(
        'console_sessions',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('csrf_token', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('key_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id']),
        sa.UniqueConstraint('token_hash'),
    )


def downgrade() -> None:
    op.drop_table('console_sessions')
    op.drop_index('ix_usage_daily_tenant_day', table_name='usage_daily')
    op.drop_table('usage_daily')
