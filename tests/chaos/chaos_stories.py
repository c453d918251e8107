"""The lifecycles the chaos run plays, as upstream and an approver would publish them (the contract's events).

Each story waits for the state it needs before its next event, but only so long: under faults a wait may
time out and the story carries on, which is what upstream does too. Every story's requests must end
final whatever happened; what they end as is recorded per story.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.amqp.publisher import Publisher, PublishError
from shared.events import Event, format_time, new_event

STORIES = ("approve_checkin", "approve_expire", "deny", "checkin_before_decision", "duplicate_reordered",
           "overlapping_grants")
StateOf = Callable[[str], str]


class Upstream:
    """Publishes as the PAM workflow and the requests tab would; a publish lost to a broker restart is retried
    (upstream's own outbox would), never by the daemons' code."""

    def __init__(self, publisher: Publisher, state_of: StateOf, addresses: list[str], expire_seconds: int) -> None:
        self.publisher = publisher
        self.state_of = state_of
        self.addresses = addresses
        self.expire_seconds = expire_seconds
        self.retried = 0

    def send(self, event: Event) -> None:
        deadline = time.monotonic() + 600  # a broker application restart takes minutes on a loaded machine
        while True:
            try:
                self.publisher.publish(event.type, event.to_json(), message_id=event.id)
                return
            except PublishError:
                self.retried += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def wait(self, request_id: str, states: tuple[str, ...], timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state_of(request_id) in states:
                return True
            time.sleep(0.2)
        return False

    def requested(self, host: int, secret: int, duration: int | None = None) -> tuple[Event, dict[str, str]]:
        ids = {"request_id": f"req-{uuid.uuid4().hex[:12]}", "checkout_id": f"co-{uuid.uuid4().hex[:12]}",
               "secret_id": f"sec-{host}-{secret}"}
        data: dict[str, Any] = {**ids, "requester_id": "alice", "host": self.addresses[host],
                                "justification": "chaos",
                                "checkout_expires_at": format_time(datetime.now(UTC) + timedelta(hours=1))}
        if duration is not None:
            data["duration_seconds"] = duration
        return new_event("elevation.requested", data, source="chaos/workflow"), ids

    @staticmethod
    def decided(request_id: str, decision: str = "approve") -> Event:
        return new_event("elevation.decided", {"request_id": request_id, "approver_id": "bob", "decision": decision},
                         source="chaos/requests-tab")

    @staticmethod
    def checked_in(ids: dict[str, str]) -> Event:
        return new_event("secret.checked_in", {"checkout_id": ids["checkout_id"], "secret_id": ids["secret_id"],
                                               "reason": "service_closed"}, source="chaos/workflow")

    def granted(self, host: int, secret: int, duration: int | None = None) -> dict[str, str]:
        event, ids = self.requested(host, secret, duration)
        self.send(event)
        self.wait(ids["request_id"], ("PENDING",), 20)
        self.send(self.decided(ids["request_id"]))
        return ids


def play(story: str, up: Upstream, host: int, secret: int) -> list[str]:
    """Play one story on (host, secret); returns the request ids it made."""
    if story == "approve_checkin":
        ids = up.granted(host, secret)
        up.wait(ids["request_id"], ("ELEVATED",))
        up.send(up.checked_in(ids))
        return [ids["request_id"]]
    if story == "approve_expire":
        return [up.granted(host, secret, duration=up.expire_seconds)["request_id"]]
    if story == "deny":
        event, ids = up.requested(host, 3)
        up.send(event)
        up.wait(ids["request_id"], ("PENDING",), 20)
        up.send(up.decided(ids["request_id"], "deny"))
        return [ids["request_id"]]
    if story == "checkin_before_decision":
        event, ids = up.requested(host, secret)
        up.send(event)
        up.wait(ids["request_id"], ("PENDING",), 20)
        up.send(up.checked_in(ids))
        up.wait(ids["request_id"], ("CANCELLED",), 20)
        up.send(up.decided(ids["request_id"]))  # too late: must change nothing
        return [ids["request_id"]]
    if story == "duplicate_reordered":
        event, ids = up.requested(host, secret)
        decision = up.decided(ids["request_id"])
        up.send(decision)  # the decision overtakes the request (parked until it arrives)
        up.send(event)
        up.send(event)  # the same event twice: one effect
        up.send(decision)
        up.wait(ids["request_id"], ("ELEVATED",))
        checked_in = up.checked_in(ids)
        up.send(checked_in)
        up.send(checked_in)
        return [ids["request_id"]]
    if story == "overlapping_grants":
        first = up.granted(host, secret)
        up.wait(first["request_id"], ("ELEVATED",))
        second = up.granted(host, secret)
        up.wait(second["request_id"], ("ELEVATING", "ELEVATED"), 20)
        up.send(up.checked_in(first))
        up.wait(first["request_id"], ("REVOKED", "FAILED"))
        up.send(up.checked_in(second))
        return [first["request_id"], second["request_id"]]
    raise ValueError(story)
