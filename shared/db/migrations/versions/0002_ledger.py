"""The membership ledger: memberships by SID, holds of grants, reconcile targets, drift; grants keep
their SIDs and what they need to end; tasks say what to do with drift; host names in one canonical form.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('memberships',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('group_sid', sa.String(length=184), nullable=False),
    sa.Column('account_sid', sa.String(length=184), nullable=False),
    sa.Column('account', sa.String(length=512), nullable=False),
    sa.Column('baseline', sa.String(length=8), nullable=False),
    sa.Column('ours', sa.Boolean(), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("baseline IN ('yes', 'no', 'unknown')", name=op.f('ck_memberships_baseline')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_memberships')),
    sa.UniqueConstraint('host', 'group_sid', 'account_sid', name=op.f('uq_memberships_host_group_sid_account_sid'))
    )
    op.create_table('holds',
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('membership_id', sa.Integer(), nullable=False),
    sa.Column('held', sa.Boolean(), nullable=False),
    sa.Column('add_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decides_baseline', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['membership_id'], ['memberships.id'], name=op.f('fk_holds_membership_id_memberships')),
    sa.PrimaryKeyConstraint('request_id', name=op.f('pk_holds'))
    )
    with op.batch_alter_table('holds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_holds_membership_id'), ['membership_id'], unique=False)
    op.create_table('reconcile_targets',
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('group_sid', sa.String(length=184), nullable=False),
    sa.Column('target', sa.JSON(), nullable=False),
    sa.Column('next_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('baselined_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('host', 'group_sid', name=op.f('pk_reconcile_targets'))
    )
    with op.batch_alter_table('reconcile_targets', schema=None) as batch_op:
        batch_op.create_index('ix_reconcile_targets_next_at', ['next_at'], unique=False)
    op.create_table('drift',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('group_sid', sa.String(length=184), nullable=False),
    sa.Column('account_sid', sa.String(length=184), nullable=False),
    sa.Column('account', sa.String(length=512), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drift'))
    )
    with op.batch_alter_table('drift', schema=None) as batch_op:
        batch_op.create_index('ix_drift_open', ['host', 'group_sid', 'account_sid'], unique=False)
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account_sid', sa.String(length=184), nullable=True))
        batch_op.add_column(sa.Column('group_sid', sa.String(length=184), nullable=True))
        batch_op.add_column(sa.Column('target', sa.JSON(), nullable=True))
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('drift', sa.String(length=8), server_default='report', nullable=False))
        batch_op.create_check_constraint(op.f('ck_tasks_drift'), "drift IN ('report', 'remove')")
    # One canonical form for host names (DNS names are case-insensitive).
    op.execute("UPDATE requests SET host = lower(host)")
    op.execute("UPDATE hosts SET address = lower(address)")


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_tasks_drift'), type_='check')
        batch_op.drop_column('drift')
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_column('target')
        batch_op.drop_column('group_sid')
        batch_op.drop_column('account_sid')
    op.drop_table('drift')
    op.drop_table('reconcile_targets')
    with op.batch_alter_table('holds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_holds_membership_id'))
    op.drop_table('holds')
    op.drop_table('memberships')
