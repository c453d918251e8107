"""`ix_requests_legacy_grant`: each hold an elevator takes looks for a grant from before the ledger (no SIDs)
of the same account on the host. Without it that look read every request the host ever had.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

LEGACY_SQL = "account_sid IS NULL AND elevated_at IS NOT NULL"  # as shared/db/models.py, frozen here


def upgrade() -> None:
    op.create_index('ix_requests_legacy_grant', 'requests', ['host'], unique=False,
                    postgresql_where=sa.text(LEGACY_SQL), sqlite_where=sa.text(LEGACY_SQL))


def downgrade() -> None:
    op.drop_index('ix_requests_legacy_grant', table_name='requests')
