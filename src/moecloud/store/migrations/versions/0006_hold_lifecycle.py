"""Holds name the gateway that placed them, so its restart releases exactly the holds it left behind.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('holds') as batch:
        batch.add_column(sa.Column('gateway', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('holds') as batch:
        batch.drop_column('gateway')
