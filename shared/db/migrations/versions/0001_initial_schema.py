"""Initial schema: configuration, requests, append-only audit trail, outbox and inbox.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 01:41:16.368200
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('applications',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_applications'))
    )
    op.create_table('audit',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=True),
    sa.Column('to_state', sa.String(length=16), nullable=True),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit'))
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_request_id'), ['request_id'], unique=False)

    op.create_table('checkins',
    sa.Column('checkout_id', sa.String(length=128), nullable=False),
    sa.Column('secret_id', sa.String(length=128), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('checked_in_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('checkout_id', name=op.f('pk_checkins'))
    )
    op.create_table('credential_providers',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=256), nullable=False),
    sa.Column('password_env', sa.String(length=256), nullable=True),
    sa.Column('password_file', sa.String(length=1024), nullable=True),
    sa.CheckConstraint('password_env IS NOT NULL OR password_file IS NOT NULL', name=op.f('ck_credential_providers_has_password_source')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credential_providers'))
    )
    op.create_table('inbox',
    sa.Column('consumer', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'event_id', name=op.f('pk_inbox'))
    )
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('event_id', name=op.f('uq_outbox_event_id'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_unpublished', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))

    op.create_table('requests',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('checkout_id', sa.String(length=128), nullable=False),
    sa.Column('secret_id', sa.String(length=128), nullable=False),
    sa.Column('requester_id', sa.String(length=128), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('justification', sa.Text(), nullable=False),
    sa.Column('ticket', sa.String(length=2000), nullable=True),
    sa.Column('duration_seconds', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('task_id', sa.String(length=128), nullable=True),
    sa.Column('account', sa.String(length=512), nullable=True),
    sa.Column('group', sa.String(length=256), nullable=True),
    sa.Column('approver_id', sa.String(length=128), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('checkout_expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expiry_event_id', sa.String(length=128), nullable=True),
    sa.Column('elevated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pre_existing', sa.Boolean(), nullable=False),
    sa.Column('end_trigger', sa.String(length=64), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('add_deadline', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('revoking_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stalled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('PENDING', 'APPROVED', 'DENIED', 'CANCELLED', 'ELEVATING', 'ELEVATED', 'REVOKING', 'REVOKED', 'FAILED')", name=op.f('ck_requests_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_requests'))
    )
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_requests_checkout_id'), ['checkout_id'], unique=False)
        batch_op.create_index('ix_requests_due_expiry', ['expires_at'], unique=False, postgresql_where=sa.text("state IN ('APPROVED', 'ELEVATING', 'ELEVATED') AND expiry_event_id IS NULL"), sqlite_where=sa.text("state IN ('APPROVED', 'ELEVATING', 'ELEVATED') AND expiry_event_id IS NULL"))
        batch_op.create_index('ix_requests_due_revocation', ['next_attempt_at'], unique=False, postgresql_where=sa.text("state = 'REVOKING'"), sqlite_where=sa.text("state = 'REVOKING'"))
        batch_op.create_index('ix_requests_membership', ['host', 'account', 'group'], unique=False)
        batch_op.create_index('ix_requests_pending_deadline', ['checkout_expires_at'], unique=False, postgresql_where=sa.text("state = 'PENDING'"), sqlite_where=sa.text("state = 'PENDING'"))
        batch_op.create_index('ix_requests_stuck_elevating', ['lease_until'], unique=False, postgresql_where=sa.text("state = 'ELEVATING'"), sqlite_where=sa.text("state = 'ELEVATING'"))
        batch_op.create_index('uq_requests_active_checkout', ['checkout_id'], unique=True, postgresql_where=sa.text("state IN ('PENDING', 'APPROVED', 'ELEVATING', 'ELEVATED', 'REVOKING')"), sqlite_where=sa.text("state IN ('PENDING', 'APPROVED', 'ELEVATING', 'ELEVATED', 'REVOKING')"))

    op.create_table('tasks',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('group', sa.String(length=256), nullable=False),
    sa.Column('approval_required', sa.Boolean(), nullable=False),
    sa.Column('approval_window_seconds', sa.Integer(), nullable=False),
    sa.Column('removal_policy', sa.String(length=32), nullable=False),
    sa.Column('on_revoke', sa.String(length=16), nullable=False),
    sa.CheckConstraint("on_revoke IN ('report', 'logoff')", name=op.f('ck_tasks_on_revoke')),
    sa.CheckConstraint('approval_window_seconds > 0', name=op.f('ck_tasks_window_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks'))
    )
    op.create_table('users',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.CheckConstraint("kind IN ('internal', 'vendor_rep')", name=op.f('ck_users_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users'))
    )
    op.create_table('hosts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('application_id', sa.String(length=128), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('scheme', sa.String(length=8), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('transport', sa.String(length=16), nullable=False),
    sa.Column('verify_tls', sa.Boolean(), nullable=False),
    sa.Column('ca_file', sa.String(length=1024), nullable=True),
    sa.CheckConstraint("scheme IN ('http', 'https')", name=op.f('ck_hosts_scheme')),
    sa.ForeignKeyConstraint(['application_id'], ['applications.id'], name=op.f('fk_hosts_application_id_applications'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hosts')),
    sa.UniqueConstraint('application_id', 'address', name=op.f('uq_hosts_application_id_address'))
    )
    op.create_table('secrets',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('account', sa.String(length=256), nullable=False),
    sa.Column('domain', sa.String(length=256), nullable=True),
    sa.Column('application_id', sa.String(length=128), nullable=False),
    sa.Column('credential_provider_id', sa.String(length=128), nullable=False),
    sa.Column('checkout_enabled', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['application_id'], ['applications.id'], name=op.f('fk_secrets_application_id_applications')),
    sa.ForeignKeyConstraint(['credential_provider_id'], ['credential_providers.id'], name=op.f('fk_secrets_credential_provider_id_credential_providers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_secrets'))
    )
    op.create_table('user_permissions',
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('permission', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_permissions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'permission', name=op.f('pk_user_permissions'))
    )
    op.create_table('task_secrets',
    sa.Column('task_id', sa.String(length=128), nullable=False),
    sa.Column('secret_id', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['secret_id'], ['secrets.id'], name=op.f('fk_task_secrets_secret_id_secrets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_secrets_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'secret_id', name=op.f('pk_task_secrets')),
    sa.UniqueConstraint('secret_id', name=op.f('uq_task_secrets_secret_id'))
    )

    _make_audit_append_only()


APPEND_ONLY_PG = """
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
"""


def _make_audit_append_only() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY_PG)
        return
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
            f"BEGIN SELECT RAISE(ABORT, 'audit is append-only: {verb} refused'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_no_update ON audit")
        op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
    op.drop_table('task_secrets')
    op.drop_table('user_permissions')
    op.drop_table('secrets')
    op.drop_table('hosts')
    op.drop_table('users')
    op.drop_table('tasks')
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_index('uq_requests_active_checkout', postgresql_where=sa.text("state IN ('PENDING', 'APPROVED', 'ELEVATING', 'ELEVATED', 'REVOKING')"), sqlite_where=sa.text("state IN ('PENDING', 'APPROVED', 'ELEVATING', 'ELEVATED', 'REVOKING')"))
        batch_op.drop_index('ix_requests_stuck_elevating', postgresql_where=sa.text("state = 'ELEVATING'"), sqlite_where=sa.text("state = 'ELEVATING'"))
        batch_op.drop_index('ix_requests_pending_deadline', postgresql_where=sa.text("state = 'PENDING'"), sqlite_where=sa.text("state = 'PENDING'"))
        batch_op.drop_index('ix_requests_membership')
        batch_op.drop_index('ix_requests_due_revocation', postgresql_where=sa.text("state = 'REVOKING'"), sqlite_where=sa.text("state = 'REVOKING'"))
        batch_op.drop_index('ix_requests_due_expiry', postgresql_where=sa.text("state IN ('APPROVED', 'ELEVATING', 'ELEVATED') AND expiry_event_id IS NULL"), sqlite_where=sa.text("state IN ('APPROVED', 'ELEVATING', 'ELEVATED') AND expiry_event_id IS NULL"))
        batch_op.drop_index(batch_op.f('ix_requests_checkout_id'))

    op.drop_table('requests')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_unpublished', postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))

    op.drop_table('outbox')
    op.drop_table('inbox')
    op.drop_table('credential_providers')
    op.drop_table('checkins')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_request_id'))

    op.drop_table('audit')
    op.drop_table('applications')
