"""Helpers for the reaper's tests: a reaper wired in-process to a database and a WinRM port, events,
and readers for the outbox and audit trail."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.reaper.handlers import make_process
from services.reaper.revocation import Revoker
from services.reaper.sweeper import Sweeper
from shared.clock import Clock, SystemClock
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Hold, Membership, OutboxEvent, Request
from shared.events import Event, new_event
from shared.settings import Settings
from shared.winrm import WinRMPort
from tests.factories import PASSWORD_ENV

HOST = "win1.test"
ADMINS = "S-1-5-32-544"


def fast_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url, "retry_initial_seconds": 0.01, "retry_max_seconds": 0.05,
        "retry_in_process_seconds": 0.1, "stall_threshold_seconds": 300.0, "lease_seconds": 5.0,
        "sweep_interval_seconds": 0.2}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, "S3cret-Pa55word!")
    return "S3cret-Pa55word!"


@dataclass
class InProcessReaper:
    """The reaper's handler, revoker and sweeper without a broker: revocations run synchronously."""

    factory: sessionmaker[Session]
    port: WinRMPort
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.revoker = Revoker(self.factory, self.port, self.settings, self.clock, self.stopping)
        # As in services/reaper/main.py: what the handler and the sweeper hand over is already claimed.
        self.process: Callable[[Event], None] = make_process(
            self.factory, self.clock, lambda rid: self.revoker.work(rid, in_process=True),
            self.revoker.lease_until, sweep_interval=self.settings.sweep_interval_seconds)
        self.sweep = Sweeper(self.factory, self.clock, self.revoker.claim_due, lambda: 100, self.submit,
                             self.revoker.lease_until)

    def submit(self, request_id: str, *, in_process: bool) -> None:
        self.revoker.work(request_id, in_process=in_process)

    def deliver(self, event_type: str, **data: Any) -> Event:
        event = new_event(event_type, data, source="test")
        self.process(event)
        return event


def request(factory: sessionmaker[Session], request_id: str) -> Request:
    with transaction(factory) as s:
        row = s.get(Request, request_id, populate_existing=True)
        assert row is not None
        return row


def outbox(factory: sessionmaker[Session], event_type: str) -> list[dict[str, Any]]:
    with transaction(factory) as s:
        rows = s.scalars(select(OutboxEvent).where(OutboxEvent.type == event_type).order_by(OutboxEvent.id))
        return [json.loads(r.body)["data"] for r in rows]


def audit(factory: sessionmaker[Session], request_id: str) -> list[AuditEntry]:
    with transaction(factory) as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.request_id == request_id)
                              .order_by(AuditEntry.id)))


def set_values(factory: sessionmaker[Session], request_id: str, **values: Any) -> None:
    """Columns `make_request` fixes (pre_existing, failed) or the elevator wrote, set afterwards."""
    with transaction(factory) as s:
        s.execute(update(Request).where(Request.id == request_id).values(**values))


def held(factory: sessionmaker[Session], request_id: str) -> tuple[Hold, Membership]:
    """The grant's ledger hold and the membership it holds."""
    with transaction(factory) as s:
        hold = s.get(Hold, request_id, populate_existing=True)
        assert hold is not None, f"{request_id} never took hold"
        membership = s.get(Membership, hold.membership_id, populate_existing=True)
        assert membership is not None
        return hold, membership
