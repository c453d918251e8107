"""Listing at scale: indexes for `jitctl requests` and `jitctl audit`, newest first, read one page at a
time in index order (keyset pagination), overall and by requester, and audit entries by actor. No index
leads with state: SQLite would pick it over the sweeper's partial indexes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 18:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_requests_listing', 'requests', ['requested_at', 'id'], unique=False)
    op.create_index('ix_requests_requester_listing', 'requests', ['requester_id', 'requested_at', 'id'], unique=False)
    op.create_index('ix_audit_actor_listing', 'audit', ['actor', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_audit_actor_listing', table_name='audit')
    op.drop_index('ix_requests_requester_listing', table_name='requests')
    op.drop_index('ix_requests_listing', table_name='requests')
