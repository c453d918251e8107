"""Every Prometheus metric the daemons export, and the two hooks that keep them honest.

Names follow Prometheus conventions: the `jit_` prefix, `_total` on counters, base units (`_seconds`),
and bounded label sets (event types, states, WinRM operations, outcomes, queues and configured hosts;
never a request id). The metrics live in prometheus-client's default registry; they cost nothing
until `shared.health.serve` exposes them on `JIT_METRICS_PORT`.

- `after_commit` counts something only if the transaction that did it commits (a transition rolled
  back by a lost race or a database error never shows up in `jit_state_transitions_total`).
- `DatabaseGauges` reads what only the database knows (revocations pending and stalled, the oldest
  pending one, sweeper lag, outbox backlog, open drift) every few seconds. Every daemon exports the
  same values, so an alert still fires while one daemon is down: aggregate them with `max()`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import Clock
from shared.db.models import ACTIVE_SQL, EXPIRABLE_SQL, Drift, OutboxEvent, Request
from shared.states import State

# `*_created` series double the output and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated

EVENTS_CONSUMED = Counter(
    "jit_events_consumed_total", "Events this daemon consumed, by type and outcome "
    "(ack, dead_lettered, requeued, crashed)", ["type", "outcome"])
EVENT_HANDLING = Histogram(
    "jit_event_handling_seconds", "Time to decode, process and commit one consumed event", ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
EVENTS_PUBLISHED = Counter(
    "jit_events_published_total", "Events the outbox relay published (or failed to), by type and outcome",
    ["type", "outcome"])
TRANSITIONS = Counter(
    "jit_state_transitions_total", "Committed request state transitions (from_state NEW: a new request)",
    ["from_state", "to_state"])
WINRM_CALLS = Histogram(
    "jit_winrm_call_seconds", "WinRM calls (resolve, add_member, remove_member, ...), by operation and outcome "
    "(ok, retryable, permanent)", ["operation", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120))
WINRM_IN_FLIGHT = Gauge("jit_winrm_calls_in_flight", "WinRM calls in flight, per configured host", ["host"])
DEAD_LETTERS = Gauge("jit_dead_letter_messages", "Messages in this daemon's dead-letter queue at the last look",
                     ["queue"])
DRIFT_FOUND = Counter("jit_drift_found_total", "Members of watched groups the reconciler found and no grant "
                      "explains, by action (reported, removed, remove_failed)", ["action"])
RECONCILE_PASSES = Counter("jit_reconcile_passes_total", "Reconciler passes over one (host, group), by outcome",
                           ["outcome"])

REVOCATIONS_PENDING = Gauge("jit_revocations_pending", "Requests in REVOKING: removals not yet confirmed")
REVOCATIONS_STALLED = Gauge("jit_revocations_stalled", "REVOKING requests that passed the stall threshold")
OLDEST_REVOCATION = Gauge("jit_revocation_oldest_pending_seconds",
                          "Age of the oldest unconfirmed revocation (0 when none): the number to page on")
SWEEPER_LAG = Gauge("jit_sweeper_lag_seconds",
                    "Now minus the oldest expires_at that has passed while its request is not yet ending (0 if none)")
OUTBOX_BACKLOG = Gauge("jit_outbox_backlog", "Events committed to the outbox and not yet published")
OUTBOX_AGE = Gauge("jit_outbox_oldest_seconds", "Age of the oldest unpublished outbox event (0 when none)")
DRIFT_OPEN = Gauge("jit_drift_open", "Drift rows not yet resolved (what `jitctl drift` lists)")
REQUESTS = Gauge("jit_requests", "Requests in each active state", ["state"])
GAUGES_UPDATED = Gauge("jit_database_gauges_updated_timestamp_seconds",
                       "When the database-derived gauges were last read (unix time)")

_PENDING_KEY = "jit.metrics.after_commit"
ACTIVE_STATES = tuple(s.value for s in State if s.value in ACTIVE_SQL)


def after_commit(session: Session, apply: Callable[[], None]) -> None:
    """Run `apply` (a counter increment) once the session's current transaction commits; drop it on rollback."""
    session.info.setdefault(_PENDING_KEY, []).append(apply)


@event.listens_for(Session, "after_commit")
def _flush_pending(session: Session) -> None:
    for apply in session.info.pop(_PENDING_KEY, []):
        apply()


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


def count_transition(session: Session, from_state: str | None, to_state: str) -> None:
    after_commit(session, TRANSITIONS.labels(from_state=from_state or "NEW", to_state=to_state).inc)


def _age(now: datetime, then: datetime | None) -> float:
    return max((now - then).total_seconds(), 0.0) if then is not None else 0.0


class DatabaseGauges:
    """A periodic job: reads the database-derived gauges in one short read-only transaction."""

    def __init__(self, factory: sessionmaker[Session], clock: Clock) -> None:
        self.factory = factory
        self.clock = clock
        for state in ACTIVE_STATES:
            REQUESTS.labels(state=state)

    def __call__(self) -> None:
        now = self.clock.now()
        revoking = Request.state == State.REVOKING.value
        with self.factory() as session:
            pending, stalled, oldest = session.execute(
                select(func.count(), func.count(Request.stalled_at),
                       func.min(func.coalesce(Request.revoking_since, Request.updated_at))).where(revoking)).one()
            lag_from = session.scalar(select(func.min(Request.expires_at))
                                      .where(text(EXPIRABLE_SQL), Request.expires_at <= now))
            backlog, outbox_from = session.execute(
                select(func.count(), func.min(OutboxEvent.created_at)).where(text("published_at IS NULL"))).one()
            drift = session.scalar(select(func.count()).select_from(Drift).where(Drift.resolved_at.is_(None)))
            by_state: dict[str, Any] = dict(session.execute(
                select(Request.state, func.count()).where(text(ACTIVE_SQL)).group_by(Request.state)).all())
        REVOCATIONS_PENDING.set(pending)
        REVOCATIONS_STALLED.set(stalled)
        OLDEST_REVOCATION.set(_age(now, _aware(oldest)))
        SWEEPER_LAG.set(_age(now, _aware(lag_from)))
        OUTBOX_BACKLOG.set(backlog)
        OUTBOX_AGE.set(_age(now, _aware(outbox_from)))
        DRIFT_OPEN.set(drift or 0)
        for state in ACTIVE_STATES:
            REQUESTS.labels(state=state).set(by_state.get(state, 0))
        GAUGES_UPDATED.set_to_current_time()


def _aware(value: Any) -> datetime | None:
    """Aggregates bypass the UTC column type on SQLite (min() returns naive or text): make them aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value
