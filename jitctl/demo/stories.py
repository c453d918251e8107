"""The four stories the demo plays, as upstream and an approver would drive them."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.amqp.publisher import Publisher
from shared.events import new_event

UPSTREAM = "demo/connection-workflow"


@dataclass(frozen=True)
class Story:
    request_id: str
    checkout_id: str
    secret_id: str
    host: str
    account: str
    expected: str
    title: str


class Driver:
    """Publishes what upstream and approvers would, and steers the simulated hosts."""

    def __init__(self, publisher: Publisher, control_url: str) -> None:
        self._publisher = publisher
        self._control = control_url

    def publish(self, event_type: str, data: dict[str, Any], source: str = UPSTREAM) -> None:
        event = new_event(event_type, data, source=source)
        self._publisher.publish(event.type, event.to_json(), message_id=event.id)

    def request(self, story: Story) -> None:
        self.publish("elevation.requested", {
            "request_id": story.request_id, "checkout_id": story.checkout_id, "secret_id": story.secret_id,
            "requester_id": "alice", "host": story.host, "justification": story.title,
            "checkout_expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        })

    def decide(self, story: Story, decision: str, reason: str | None = None) -> None:
        data = {"request_id": story.request_id, "approver_id": "bob", "decision": decision}
        if reason:
            data["reason"] = reason
        self.publish("elevation.decided", data, source="demo/requests-tab")

    def check_in(self, story: Story, reason: str) -> None:
        self.publish("secret.checked_in", {"checkout_id": story.checkout_id, "secret_id": story.secret_id,
                                           "reason": reason})

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - the loopback control URL we started
            f"{self._control}/{path}", data=data, method="POST" if data else "GET",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - loopback control URL we started
            return json.loads(response.read() or b"null")

    def members(self, host_index: int, group: str) -> list[str]:
        groups = self.control(f"hosts/{host_index}").get("groups", {})
        return sorted(groups.get(group, {}).get("members", []))


Wait = Callable[[str, str, float], bool]


def play(driver: Driver, stories: list[Story], wait: Wait, note: Callable[[str], None],
         db_host_index: int) -> None:
    approved, denied, expires, host_down = stories

    def requested_and_decided(story: Story, decision: str, reason: str | None = None) -> None:
        note(f"story {stories.index(story) + 1}: {story.title}")
        driver.request(story)
        wait(story.request_id, "PENDING", 15)
        driver.decide(story, decision, reason)

    requested_and_decided(approved, "approve")
    wait(approved.request_id, "ELEVATED", 30)
    driver.check_in(approved, "service_closed")
    wait(approved.request_id, "REVOKED", 30)

    requested_and_decided(denied, "deny", "no change ticket")
    wait(denied.request_id, "DENIED", 15)

    requested_and_decided(expires, "approve")
    wait(expires.request_id, "ELEVATED", 30)
    wait(expires.request_id, "REVOKED", 60)

    requested_and_decided(host_down, "approve")
    wait(host_down.request_id, "ELEVATED", 30)
    driver.control(f"hosts/{db_host_index}/down", {"seconds": 8})
    note(f"host {host_down.host} is down for 8 s; the user checks in now")
    driver.check_in(host_down, "manual")
    wait(host_down.request_id, "REVOKED", 90)
