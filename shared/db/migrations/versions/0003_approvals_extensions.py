"""Approval by more than one, extensions and decision timeouts: votes and extensions tables; tasks say how
many approvals, what a denial does, how long a decision may wait and what an extension needs; requests
keep their decision deadline.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

DECIDE_BY_SQL = "state = 'PENDING' AND decide_by IS NOT NULL"


def upgrade() -> None:
    op.create_table('votes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('extension_id', sa.String(length=128), server_default='', nullable=False),
    sa.Column('approver_id', sa.String(length=128), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('event_id', sa.String(length=128), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("decision IN ('approve', 'deny')", name=op.f('ck_votes_decision')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_votes')),
    sa.UniqueConstraint('request_id', 'extension_id', 'approver_id',
                        name=op.f('uq_votes_request_id_extension_id_approver_id'))
    )
    op.create_table('extensions',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('requester_id', sa.String(length=128), nullable=False),
    sa.Column('duration_seconds', sa.Integer(), nullable=False),
    sa.Column('justification', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('approver_id', sa.String(length=128), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('previous_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.CheckConstraint("state IN ('PENDING', 'EXTENDED', 'DENIED')", name=op.f('ck_extensions_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_extensions'))
    )
    with op.batch_alter_table('extensions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_extensions_request_id'), ['request_id'], unique=False)
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approvals_required', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('deny_policy', sa.String(length=8), server_default='any', nullable=False))
        batch_op.add_column(sa.Column('decision_timeout_seconds', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('extension', sa.String(length=16), server_default='refused', nullable=False))
        batch_op.add_column(sa.Column('extension_max_total_seconds', sa.Integer(), nullable=True))
        batch_op.create_check_constraint(op.f('ck_tasks_approvals_required'), "approvals_required >= 1")
        batch_op.create_check_constraint(op.f('ck_tasks_deny_policy'), "deny_policy IN ('any', 'majority')")
        batch_op.create_check_constraint(op.f('ck_tasks_extension'), "extension IN ('refused', 'automatic', 'approval')")
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('decide_by', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_requests_decision_deadline', ['decide_by'], unique=False,
                              postgresql_where=sa.text(DECIDE_BY_SQL), sqlite_where=sa.text(DECIDE_BY_SQL))


def downgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_index('ix_requests_decision_deadline')
        batch_op.drop_column('decide_by')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_tasks_extension'), type_='check')
        batch_op.drop_constraint(op.f('ck_tasks_deny_policy'), type_='check')
        batch_op.drop_constraint(op.f('ck_tasks_approvals_required'), type_='check')
        batch_op.drop_column('extension_max_total_seconds')
        batch_op.drop_column('extension')
        batch_op.drop_column('decision_timeout_seconds')
        batch_op.drop_column('deny_policy')
        batch_op.drop_column('approvals_required')
    with op.batch_alter_table('extensions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_extensions_request_id'))
    op.drop_table('extensions')
    op.drop_table('votes')
