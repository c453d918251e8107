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
from shared.db.models import AuditEntry, OutboxEvent, Request
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
        self.process: Callable[[Event], None] = make_process(
            self.factory, self.clock, lambda rid: self.revoker.attempt(rid, in_process=True),
            sweep_interval=self.settings.sweep_interval_seconds)
        self.sweep = Sweeper(self.factory, self.clock, self.revoker.claim_due, lambda: 100,
                             lambda rid: self.revoker.work(rid, in_process=False))

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
    """Columns `make_request` fixes (pre_existing, failed), set afterwards."""
    with transaction(factory) as s:
        s.execute(update(Request).where(Request.id == request_id).values(**values))
