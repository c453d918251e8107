"""The schema on both engines: migration matches the models, constraints hold, claims and CAS are race-free."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session, sessionmaker

from shared.db import inbox
from shared.db.engine import transaction
from shared.db.ledger import legacy_grant_query
from shared.db.models import AuditEntry, Base, Request, Task, TaskSecret
from shared.db.transitions import Cause, load, transition
from shared.states import State, Trigger
from tests.factories import HostSpec, make_request, seed_config

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def test_the_migration_creates_exactly_the_models(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_secret_is_in_at_most_one_task(factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    with pytest.raises(sa.exc.IntegrityError), transaction(factory) as s:
        s.add(Task(id="task2", group="S-1-5-32-544", approval_required=True, approval_window_seconds=60,
                   removal_policy="on_secret_check_in", on_revoke="report"))
        s.flush()
        s.add(TaskSecret(task_id="task2", secret_id="sec-0-0"))


def test_one_active_request_per_checkout(factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    make_request(factory, secret_id="sec-0-0", host="127.0.0.1", checkout_id="co-1", state=State.PENDING)
    make_request(factory, secret_id="sec-0-0", host="127.0.0.1", checkout_id="co-1", state=State.DENIED)
    with pytest.raises(sa.exc.IntegrityError):
        make_request(factory, secret_id="sec-0-0", host="127.0.0.1", checkout_id="co-1", state=State.APPROVED)


def test_the_audit_trail_is_append_only(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        s.add(AuditEntry(at=NOW, action="x", actor="test"))
    for statement in (sa.update(AuditEntry).values(actor="mallory"), sa.delete(AuditEntry)):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), transaction(factory) as s:
            s.execute(statement)
    with factory() as s:
        assert s.scalars(sa.select(AuditEntry.actor)).all() == ["test"]


def test_the_inbox_gives_one_effect_per_event(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        assert inbox.first_time(s, "reaper", "ev-1", NOW)
        assert not inbox.first_time(s, "reaper", "ev-1", NOW)
        assert inbox.first_time(s, "elevator", "ev-1", NOW)


def test_inbox_dedup_holds_across_concurrent_transactions(factory: sessionmaker[Session]) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        with transaction(factory) as s:
            results.append(inbox.first_time(s, "approval", "ev-race", NOW))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]


def test_compare_and_set_lets_exactly_one_of_many_racers_win(factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    row = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING)
    outcomes: list[State | None] = []
    barrier = threading.Barrier(6)

    def decide(trigger: Trigger, actor: str) -> None:
        barrier.wait()
        with transaction(factory) as s:
            request = load(s, row.id)
            assert request is not None
            outcomes.append(transition(s, request, trigger, now=NOW, cause=Cause(actor)))

    threads = [threading.Thread(target=decide, args=(t, f"user{i}"))
               for i, t in enumerate([Trigger.APPROVE, Trigger.DENY, Trigger.END] * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o is not None]
    # Of the racers that read PENDING, exactly one moves it; a racer that started after that commit reads
    # the new state and may legitimately move it on (APPROVED -> REVOKING by END). What must never happen is
    # a lost update: two transitions from the same state. So the audit trail is one chain from PENDING.
    with factory() as s:
        audit = s.scalars(sa.select(AuditEntry).where(AuditEntry.request_id == row.id)
                          .order_by(AuditEntry.id)).all()
        chain = [(a.from_state, a.to_state) for a in audit]
        assert [f for f, _ in chain] == ["PENDING", *[to for _, to in chain][:-1]], chain
        assert sorted(to for _, to in chain) == sorted(w.value for w in winners)
        assert s.get(Request, row.id).state == chain[-1][1]  # type: ignore[union-attr]
    assert [f for f, _ in chain].count("PENDING") == 1


def test_a_transition_that_does_not_apply_changes_nothing(factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    row = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.REVOKED)
    with transaction(factory) as s:
        request = load(s, row.id)
        assert request is not None
        assert transition(s, request, Trigger.START_ELEVATION, now=NOW, cause=Cause("test")) is None
    with factory() as s:
        assert s.get(Request, row.id).state == "REVOKED"  # type: ignore[union-attr]
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == 0


def plan_of(engine: sa.Engine, query: sa.Select[Any]) -> str:
    """The engine's query plan for `query` (on PostgreSQL with sequential scans off: a small table would get one)."""
    compiled = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
            return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + compiled))
        return "\n".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled))


def test_the_sweeper_query_uses_its_partial_index(engine: sa.Engine, factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.ELEVATED, expires_in=-5)
    query = (sa.select(Request.id)
             .where(Request.state.in_(["APPROVED", "ELEVATING", "ELEVATED"]), Request.expiry_event_id.is_(None),
                    Request.expires_at <= datetime.now(UTC) + timedelta(seconds=1)))
    assert "ix_requests_due_expiry" in plan_of(engine, query)
    with engine.connect() as conn:
        assert len(conn.execute(query).all()) == 1


def test_the_legacy_grant_look_uses_its_partial_index(engine: sa.Engine, factory: sessionmaker[Session]) -> None:
    """Every hold taken looks for a pre-ledger grant of its account on the host: not through the host's history."""
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    legacy = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.ELEVATED)
    with transaction(factory) as s:
        s.execute(sa.update(Request).values(elevated_at=NOW, account_sid=None))
    request = Request(id="another", host="127.0.0.1", group=legacy.group, account=(legacy.account or "").upper())
    assert "ix_requests_legacy_grant" in plan_of(engine, legacy_grant_query(request))
    with engine.connect() as conn:
        assert conn.execute(legacy_grant_query(request)).scalar() == legacy.id


def test_times_come_back_aware_utc_on_both_engines(factory: sessionmaker[Session]) -> None:
    paris = timezone(timedelta(hours=1))
    with transaction(factory) as s:
        s.add(AuditEntry(at=datetime(2026, 11, 24, 11, 0, tzinfo=paris), action="x", actor="test"))
    with factory() as s:
        at = s.scalars(sa.select(AuditEntry.at)).one()
    assert at == NOW and at.tzinfo is not None and at.utcoffset() == timedelta(0)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), transaction(factory) as s:
        s.add(AuditEntry(at=datetime(2026, 11, 24, 10, 0), action="x", actor="test"))
