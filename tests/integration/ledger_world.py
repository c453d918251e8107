"""A small world for ledger tests: the daemons' real handlers (elevator, reaper, reconciler) on one database
and one in-memory host, with hooks to interleave a race at an exact point."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.elevator.handler import Elevator
from services.reaper import ending
from services.reaper.reconciler import Reconciler
from services.reaper.revocation import Revoker
from shared.clock import SystemClock
from shared.db.engine import transaction
from shared.db.models import Request
from shared.db.transitions import load
from shared.events import new_event
from shared.settings import Settings
from shared.winrm import Credentials, FakeWinRM, HostEndpoint
from shared.winrm.endpoint import GroupMember, Resolved
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, make_request

HOST = "10.0.0.7"
ACCOUNT = "acct-0-0"
ENV = {PASSWORD_ENV: "Fake-Pa55word!"}


class HookedWinRM(FakeWinRM):
    """FakeWinRM that runs a test's callback once, right before or after an operation, to interleave a race."""

    def __init__(self) -> None:
        super().__init__()
        self.after: dict[str, Callable[[], None]] = {}
        self.before: dict[str, Callable[[], None]] = {}

    @staticmethod
    def _fire(hooks: dict[str, Callable[[], None]], operation: str) -> None:
        if (hook := hooks.pop(operation, None)) is not None:
            hook()

    def resolve(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> Resolved:
        answer = super().resolve(host, creds, group, member)
        self._fire(self.after, "resolve")
        return answer

    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        self._fire(self.before, "add_member")
        return super().add_member(host, creds, group_sid, member_sid)

    def list_members(self, host: HostEndpoint, creds: Credentials, group_sid: str) -> list[GroupMember]:
        answer = super().list_members(host, creds, group_sid)
        self._fire(self.after, "list_members")
        return answer

    def remove_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        self._fire(self.before, "remove_member")
        return super().remove_member(host, creds, group_sid, member_sid)


def fast_settings(**overrides: Any) -> Settings:
    return Settings(**({"retry_initial_seconds": 0.01, "retry_max_seconds": 0.02, "elevation_retry_seconds": 0.5,
                        "retry_in_process_seconds": 0.0} | overrides))


class World:
    """The daemons' real handlers on one database and one fake host."""

    def __init__(self, factory: sessionmaker[Session], fake: HookedWinRM, **settings: Any) -> None:
        self.factory = factory
        self.fake = fake
        self.settings = fast_settings(**settings)
        self.elevator = Elevator(factory, fake, self.settings, environ=ENV, sleep=lambda _s: None)
        self.revoker = Revoker(factory, fake, self.settings, SystemClock())
        self.reconciler = Reconciler(factory, fake, self.settings, SystemClock())

    def request(self, secret_id: str = "sec-0-0", **values: Any) -> Request:  # noqa: S107 - an id
        values.setdefault("account", ACCOUNT)
        return make_request(self.factory, secret_id=secret_id, host=HOST, **values)

    def elevate(self, request: Request) -> None:
        self.elevator.process(new_event("elevation.approved", {
            "request_id": request.id, "checkout_id": request.checkout_id, "secret_id": request.secret_id,
            "approver_id": "bob", "expires_at": datetime.now(UTC) + timedelta(hours=1)}, source="test"))

    def check_in(self, request: Request) -> list[str]:
        event = new_event("secret.checked_in", {"checkout_id": request.checkout_id, "secret_id": request.secret_id,
                                                "reason": "service_closed"}, source="pam/test")
        with transaction(self.factory) as session:
            return ending.on_checked_in(session, event, datetime.now(UTC))

    def revoke(self, request_id: str) -> None:
        self.revoker.work(request_id, in_process=False)

    def end(self, request: Request) -> None:
        for request_id in self.check_in(request):
            self.revoke(request_id)

    def state(self, request: Request) -> str:
        with transaction(self.factory) as session:
            row = load(session, request.id)
            assert row is not None
            return row.state

    def member(self) -> bool:
        return self.fake.sid_of(HOST, ACCOUNT) in self.fake.member_sids(HOST, ADMINISTRATORS)
