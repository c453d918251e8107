"""SQLAlchemy 2.x tables: configuration, requests and their state, the audit trail, outbox and inbox.

Credential providers hold references (an environment variable or a file name), never a password.
The schema itself is created by the Alembic migration in `shared/db/migrations`; these models must
match it (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.states import State

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATES_SQL = ", ".join(f"'{s.value}'" for s in State)
ACTIVE_SQL = "state IN ('PENDING', 'APPROVED', 'ELEVATING', 'ELEVATED', 'REVOKING')"
EXPIRABLE_SQL = "state IN ('APPROVED', 'ELEVATING', 'ELEVATED') AND expiry_event_id IS NULL"
DECIDE_BY_SQL = "state = 'PENDING' AND decide_by IS NOT NULL"
LEGACY_SQL = "account_sid IS NULL AND elevated_at IS NOT NULL"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both engines: SQLite keeps no offset, so stored values are UTC and get it back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: every time we store must carry its offset")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # The RabbitMQ user this person publishes their own decisions with (shared/trust.py); one person each.
    broker_user: Mapped[str | None] = mapped_column(String(128))
    __table_args__ = (CheckConstraint("kind IN ('internal', 'vendor_rep')", name="kind"),
                      Index("ix_users_broker_user", "broker_user", unique=True))


class UserPermission(Base):
    __tablename__ = "user_permissions"
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    permission: Mapped[str] = mapped_column(String(64), primary_key=True)


class CredentialProvider(Base):
    __tablename__ = "credential_providers"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    username: Mapped[str] = mapped_column(String(256))
    password_env: Mapped[str | None] = mapped_column(String(256))
    password_file: Mapped[str | None] = mapped_column(String(1024))
    __table_args__ = (
        CheckConstraint("password_env IS NOT NULL OR password_file IS NOT NULL", name="has_password_source"),
    )


class Application(Base):
    __tablename__ = "applications"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(255))
    scheme: Mapped[str] = mapped_column(String(8))
    port: Mapped[int] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(16))
    verify_tls: Mapped[bool] = mapped_column(Boolean, default=True)
    ca_file: Mapped[str | None] = mapped_column(String(1024))
    __table_args__ = (
        UniqueConstraint("application_id", "address"),
        CheckConstraint("scheme IN ('http', 'https')", name="scheme"),
    )


class Secret(Base):
    __tablename__ = "secrets"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    account: Mapped[str] = mapped_column(String(256))
    domain: Mapped[str | None] = mapped_column(String(256))
    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id"))
    credential_provider_id: Mapped[str] = mapped_column(ForeignKey("credential_providers.id"))
    checkout_enabled: Mapped[bool] = mapped_column(Boolean)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    group: Mapped[str] = mapped_column(String(256))
    approval_required: Mapped[bool] = mapped_column(Boolean)
    approval_window_seconds: Mapped[int] = mapped_column(Integer)
    removal_policy: Mapped[str] = mapped_column(String(32))
    on_revoke: Mapped[str] = mapped_column(String(16), default="report")
    # What the reconciler does with a member of the group that no grant explains: report it, or remove it.
    drift: Mapped[str] = mapped_column(String(8), default="report", server_default="report")
    # Distinct approvers a request needs (the requester never counts), and what a denial does:
    # any = one denial denies; majority = denials from more than half of approvals_required deny.
    approvals_required: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    deny_policy: Mapped[str] = mapped_column(String(8), default="any", server_default="any")
    # A request nobody decides is cancelled (reason decision_timeout) this long after it arrived.
    decision_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    # What an extension of an active elevation needs: refused, automatic, or approval (as the request did);
    # and the longest window any elevation may reach, counted from its approval (the checkout's end bounds it too).
    extension: Mapped[str] = mapped_column(String(16), default="refused", server_default="refused")
    extension_max_total_seconds: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (
        CheckConstraint("approval_window_seconds > 0", name="window_positive"),
        CheckConstraint("on_revoke IN ('report', 'logoff')", name="on_revoke"),
        CheckConstraint("drift IN ('report', 'remove')", name="drift"),
        CheckConstraint("approvals_required >= 1", name="approvals_required"),
        CheckConstraint("deny_policy IN ('any', 'majority')", name="deny_policy"),
        CheckConstraint("extension IN ('refused', 'automatic', 'approval')", name="extension"),
    )


class TaskSecret(Base):
    """A secret is in at most one task: `secret_id` is unique."""

    __tablename__ = "task_secrets"
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    secret_id: Mapped[str] = mapped_column(ForeignKey("secrets.id", ondelete="CASCADE"), primary_key=True, unique=True)


class Request(Base):
    """One elevation request, moved through `shared.states` by compare-and-set on `state`."""

    __tablename__ = "requests"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    checkout_id: Mapped[str] = mapped_column(String(128), index=True)
    secret_id: Mapped[str] = mapped_column(String(128))
    requester_id: Mapped[str] = mapped_column(String(128))
    host: Mapped[str] = mapped_column(String(255))
    justification: Mapped[str] = mapped_column(Text, default="")
    ticket: Mapped[str | None] = mapped_column(String(2000))
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    # Snapshot of what the request was approved for, so later config edits can't redirect it.
    task_id: Mapped[str | None] = mapped_column(String(128))
    account: Mapped[str | None] = mapped_column(String(512))
    group: Mapped[str | None] = mapped_column(String(256))
    approver_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime]
    checkout_expires_at: Mapped[datetime]
    # Undecided by then (the task's decision_timeout_seconds after it arrived): cancelled, decision_timeout.
    decide_by: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    expiry_event_id: Mapped[str | None] = mapped_column(String(128))
    elevated_at: Mapped[datetime | None]
    pre_existing: Mapped[bool] = mapped_column(Boolean, default=False)
    end_trigger: Mapped[str | None] = mapped_column(String(64))
    ended_at: Mapped[datetime | None]
    failed: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    # Until then an add-member call of the elevator may still land on the host; the reaper does not
    # confirm a removal before it (the elevator clears it when its add has returned).
    add_deadline: Mapped[datetime | None]
    # The grant's identity on the host, resolved before its first add, and what it needs to end even if
    # the configuration changes later (endpoint, credential-provider reference, on_revoke): see ledger.py.
    account_sid: Mapped[str | None] = mapped_column(String(184))
    group_sid: Mapped[str | None] = mapped_column(String(184))
    target: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_error: Mapped[str | None] = mapped_column(Text)
    revoking_since: Mapped[datetime | None]
    stalled_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    __table_args__ = (
        CheckConstraint(f"state IN ({STATES_SQL})", name="state"),
        # At most one active request per checkout, enforced by the database on both engines.
        Index("uq_requests_active_checkout", "checkout_id", unique=True,
              postgresql_where=text(ACTIVE_SQL), sqlite_where=text(ACTIVE_SQL)),
        # The sweeper's query: cost in proportion to what is due, not to the table.
        Index("ix_requests_due_expiry", "expires_at",
              postgresql_where=text(EXPIRABLE_SQL), sqlite_where=text(EXPIRABLE_SQL)),
        Index("ix_requests_due_revocation", "next_attempt_at",
              postgresql_where=text("state = 'REVOKING'"), sqlite_where=text("state = 'REVOKING'")),
        Index("ix_requests_pending_deadline", "checkout_expires_at",
              postgresql_where=text("state = 'PENDING'"), sqlite_where=text("state = 'PENDING'")),
        Index("ix_requests_stuck_elevating", "lease_until",
              postgresql_where=text("state = 'ELEVATING'"), sqlite_where=text("state = 'ELEVATING'")),
        Index("ix_requests_membership", "host", "account", "group"),
        # Grants from before the ledger (no SIDs), which every take of a hold looks for on its host: cost in
        # proportion to those rows (none, after the upgrade's grants end), not to the host's history.
        Index("ix_requests_legacy_grant", "host",
              postgresql_where=text(LEGACY_SQL), sqlite_where=text(LEGACY_SQL)),
        # `jitctl requests`: newest first, one page read in index order (keyset pagination), or by requester.
        # No index leads with state: SQLite would pick it over the sweeper's partial indexes.
        Index("ix_requests_listing", "requested_at", "id"),
        Index("ix_requests_requester_listing", "requester_id", "requested_at", "id"),
        Index("ix_requests_decision_deadline", "decide_by",
              postgresql_where=text(DECIDE_BY_SQL), sqlite_where=text(DECIDE_BY_SQL)),
    )


class Vote(Base):
    """One approver's decision on a request (`extension_id` '') or on one of its extensions: counted once."""

    __tablename__ = "votes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    extension_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
    approver_id: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(128))
    at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("request_id", "extension_id", "approver_id"),
        CheckConstraint("decision IN ('approve', 'deny')", name="decision"),
    )


class Extension(Base):
    """A requester's ask for more time on an active elevation: PENDING until EXTENDED or DENIED."""

    __tablename__ = "extensions"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    requester_id: Mapped[str] = mapped_column(String(128))
    duration_seconds: Mapped[int] = mapped_column(Integer)
    justification: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    approver_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    previous_expires_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    event_id: Mapped[str] = mapped_column(String(128))
    __table_args__ = (CheckConstraint("state IN ('PENDING', 'EXTENDED', 'DENIED')", name="state"),)


class Membership(Base):
    """The ledger: one (host, group SID, account SID) we have granted, and who holds it.

    `baseline` says whether the account was a member before our first add (yes / no / unknown);
    `ours` whether an add of ours may be in place (set before an add is sent, cleared only by a removal
    confirmed when no add can still land). Removed exactly when no grant holds it and baseline != yes.
    """

    __tablename__ = "memberships"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    group_sid: Mapped[str] = mapped_column(String(184))
    account_sid: Mapped[str] = mapped_column(String(184))
    account: Mapped[str] = mapped_column(String(512))  # the name last seen, for people; never used to act
    baseline: Mapped[str] = mapped_column(String(8))
    ours: Mapped[bool] = mapped_column(Boolean, default=False)
    settled_at: Mapped[datetime | None]  # when ours last became false (a removal confirmed, nothing in flight)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("host", "group_sid", "account_sid"),
        CheckConstraint("baseline IN ('yes', 'no', 'unknown')", name="baseline"),
    )


class Hold(Base):
    """A grant's claim on a membership: held from the intent to add until the grant ends.

    `add_until`: an add of this grant may land on the host until then (null once the add returned).
    `decides_baseline`: nothing of ours was in place when the grant took hold, so its first look at the
    host tells the membership's baseline.
    """

    __tablename__ = "holds"
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    membership_id: Mapped[int] = mapped_column(ForeignKey("memberships.id"), index=True)
    held: Mapped[bool] = mapped_column(Boolean, default=True)
    add_until: Mapped[datetime | None]
    decides_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    released_at: Mapped[datetime | None]


class ReconcileTarget(Base):
    """One (host, group) the reconciler watches: when it is due, who holds it, how to reach it."""

    __tablename__ = "reconcile_targets"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    group_sid: Mapped[str] = mapped_column(String(184), primary_key=True)
    target: Mapped[dict[str, Any]] = mapped_column(JSON)  # endpoint and credential-provider reference
    next_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    baselined_at: Mapped[datetime | None]  # first listing: the members then are the standing ones
    last_run_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_reconcile_targets_next_at", "next_at"),)


class Drift(Base):
    """A member of a watched group that no grant and no baseline explains (while it stays: resolved_at null)."""

    __tablename__ = "drift"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    group_sid: Mapped[str] = mapped_column(String(184))
    account_sid: Mapped[str] = mapped_column(String(184))
    account: Mapped[str] = mapped_column(String(512))
    action: Mapped[str] = mapped_column(String(16))  # reported | removed | remove_failed
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    __table_args__ = (Index("ix_drift_open", "host", "group_sid", "account_sid"),)


class CheckIn(Base):
    """A checkout that has been checked in; no elevation may start for it afterwards."""

    __tablename__ = "checkins"
    checkout_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(32))
    checked_in_at: Mapped[datetime]
    event_id: Mapped[str] = mapped_column(String(128))


class AuditEntry(Base):
    """Append-only: the migration installs triggers that refuse UPDATE and DELETE."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # `jitctl audit --actor`: newest first on the actor's own entries.
    # Parked decisions past their time (services/approval/parked.py): by action, oldest first.
    __table_args__ = (Index("ix_audit_actor_listing", "actor", "id"), Index("ix_audit_action_at", "action", "at"))


class OutboxEvent(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    published_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]  # a relay is publishing this row; others leave it until then
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        Index("ix_outbox_unpublished", "id",
              postgresql_where=text("published_at IS NULL"), sqlite_where=text("published_at IS NULL")),
    )


class InboxEvent(Base):
    __tablename__ = "inbox"
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[datetime]
