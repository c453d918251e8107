"""People's broker users: `users.broker_user`, the RabbitMQ user a person publishes their own decisions,
revokes and extension requests with (`jitctl` with per-person credentials). One person per broker user.
And `ix_audit_action_at`: jit-approval finds parked decisions past their time by action.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('broker_user', sa.String(length=128), nullable=True))
        batch_op.create_index('ix_users_broker_user', ['broker_user'], unique=True)
    op.create_index('ix_audit_action_at', 'audit', ['action', 'at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_audit_action_at', table_name='audit')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index('ix_users_broker_user')
        batch_op.drop_column('broker_user')
