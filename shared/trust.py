"""Who may publish what: the broker users allowed for each event type, and people who speak for themselves.

RabbitMQ validates the `user_id` property against the publishing connection's user, so `user_id` is
the broker's word, not the message's. Two rules rest on it:

1. **Components per event type** (`JIT_PUBLISHERS`): a consumed event is accepted only from the broker
   users listed for its type. `shipped` stands for the users of `deploy/rabbitmq/definitions.json`
   (`SHIPPED`); `type=user,user` entries replace that type's list. A listed user is trusted to assert
   the person the event names (the Requests tab asserts approvers, the connection workflow requesters).
2. **People** (`users[].broker_user` in the configuration): an event that names a person
   (`PERSON_FIELDS`: a decision's `approver_id`, a revoke's `operator_id`, an extension's
   `requester_id`) is also accepted from that person's own broker user, and from no one else.

No mapping and no `JIT_ALLOW_ANY_PUBLISHER=true`: a daemon refuses to start (`startup_problem`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from shared.events import EVENT_TYPES, STATUS_QUERY
from shared.settings import node_urls

if TYPE_CHECKING:
    from shared.settings import Settings

SHIPPED_WORD = "shipped"
WORKFLOW, REQUESTS_TAB, JITCTL = "jit-workflow", "jit-requests-tab", "jitctl"
APPROVAL, ELEVATOR, REAPER = "jit-approval", "jit-elevator", "jit-reaper"

# Every type of the contract and who publishes it, as deploy/rabbitmq/definitions.json grants it
# (tests/unit/test_trust.py keeps the two equal). Types a person may publish as themselves are
# also writable by `jitctl` (and each person's own broker user), but are accepted from them only
# through PERSON_FIELDS.
SHIPPED: dict[str, tuple[str, ...]] = {
    "elevation.requested": (WORKFLOW,),
    "elevation.decided": (REQUESTS_TAB,),
    "elevation.approved": (APPROVAL,),
    "elevation.denied": (APPROVAL,),
    "elevation.cancelled": (APPROVAL, REAPER),
    "elevation.elevated": (ELEVATOR,),
    "elevation.failed": (ELEVATOR, REAPER),
    "secret.checked_in": (WORKFLOW,),
    "elevation.expired": (REAPER, WORKFLOW),
    "elevation.revoke_requested": (),
    "elevation.extend_requested": (WORKFLOW,),
    "elevation.extended": (APPROVAL,),
    "elevation.extension_denied": (APPROVAL,),
    "elevation.revoked": (REAPER,),
    "elevation.revocation_stalled": (REAPER,),
    "membership.drift": (REAPER,),
    STATUS_QUERY: (WORKFLOW,),
}
SHIPPED_USERS = (APPROVAL, ELEVATOR, REAPER, WORKFLOW, REQUESTS_TAB, JITCTL)
PERSON_FIELDS: dict[str, str] = {
    "elevation.decided": "approver_id",
    "elevation.revoke_requested": "operator_id",
    "elevation.extend_requested": "requester_id",
}
KNOWN_TYPES = (*EVENT_TYPES, STATUS_QUERY)
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:\-]{0,127}$")


@functools.lru_cache(maxsize=16)
def parse_mapping(text: str) -> dict[str, frozenset[str]]:
    """`shipped;elevation.decided=tab,ops` -> {type: users}; ValueError naming the bad entry. Read-only result."""
    mapping: dict[str, frozenset[str]] = {}
    entries = [e.strip() for e in text.split(";") if e.strip()]
    if not entries:
        raise ValueError("empty; write `shipped` or TYPE=USER[,USER];TYPE=... (docs/security.md)")
    for entry in entries:
        if entry == SHIPPED_WORD:
            mapping |= {t: frozenset(users) for t, users in SHIPPED.items()}
            continue
        event_type, sep, users = (part.strip() for part in entry.partition("="))
        if not sep:
            raise ValueError(f"{entry!r} is not TYPE=USER[,USER] (or `shipped`)")
        if event_type not in KNOWN_TYPES:
            raise ValueError(f"{event_type!r} is not an event type; known: {', '.join(KNOWN_TYPES)}")
        names = [u.strip() for u in users.split(",") if u.strip()]
        bad = [u for u in names if not _USER.match(u)]
        if bad:
            raise ValueError(f"{event_type}: {', '.join(map(repr, bad))} is not a broker user name")
        mapping[event_type] = frozenset(names)
    return mapping


def render(mapping: Mapping[str, frozenset[str] | tuple[str, ...]]) -> str:
    return ";".join(f"{t}={','.join(sorted(users))}" for t, users in mapping.items())


def everyone_as(user: str) -> str:
    """A mapping naming one broker user for every type: one machine where every component shares a user
    (the demo, the tests' run user). It is a mapping, not the development flag: other users are refused."""
    return render({t: (user,) for t in KNOWN_TYPES})


def broker_user(amqp_url: str) -> str:
    """The user a connection to `amqp_url` authenticates as (pika's default: guest); every node's is the same."""
    return unquote(urlsplit(node_urls(amqp_url)[0]).username or "guest")


def refusal(event_type: str, publisher: str | None, allowed: frozenset[str] | None, person: str | None,
            person_broker_user: Callable[[str], str | None]) -> str | None:
    """Why `publisher` may not publish this event, or None when it may.

    `allowed` None: any publisher (the development flag). `person`: the person the event names
    (PERSON_FIELDS), looked up lazily, only when the publisher is not an allowed component.
    """
    if allowed is None or (publisher is not None and publisher in allowed):
        return None
    who = f"broker user {publisher!r}" if publisher else "a message without user_id"
    listed = ", ".join(sorted(allowed)) or "none"
    if person is None or publisher is None:
        return f"{event_type} published by {who}: not one of its publishers ({listed}; JIT_PUBLISHERS)"
    own = person_broker_user(person)
    if own == publisher:
        return None
    field = PERSON_FIELDS[event_type]
    whose = f"{person}'s broker user is {own!r}" if own else f"{person} has no broker_user (users[].broker_user)"
    return (f"{event_type} published by {who} with {field} {person}: not one of its publishers ({listed}; "
            f"JIT_PUBLISHERS), and {whose}: a person may only speak for themselves")


def publishable(settings: Settings) -> frozenset[str] | None:
    """The event types this process's broker user may publish (its outbox relay claims only those);
    None when it may publish every type."""
    me = broker_user(settings.amqp_url)
    types = frozenset(t for t in EVENT_TYPES if (allowed := settings.allowed_publishers(t)) is None or me in allowed)
    return None if types == frozenset(EVENT_TYPES) else types


def is_loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return bool(host)
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_warnings(amqp_url: str, database_url: str) -> list[str]:
    """A line for each connection that leaves this machine without TLS (logged at start)."""
    from sqlalchemy.engine import make_url

    found = []
    for node in node_urls(amqp_url):
        amqp = urlsplit(node)
        if amqp.scheme == "amqp" and not is_loopback(amqp.hostname):
            found.append(f"JIT_AMQP_URL is plaintext amqp:// to {amqp.hostname}: use amqps:// (docs/security.md)")
    db = make_url(database_url)
    if db.get_backend_name() == "postgresql" and db.query.get("sslmode") != "verify-full":
        # libpq's several hosts (a primary and its standbys) come as `?host=H:P&host=H:P`, none before the /.
        listed = db.query.get("host", ())
        hosts = [db.host] if db.host else [h.rsplit(":", 1)[0] for h in ([listed] if isinstance(listed, str)
                                                                          else listed)]
        found += [f"JIT_DATABASE_URL to {host} without sslmode=verify-full: the connection may be plaintext or "
                  "unauthenticated (docs/security.md)" for host in hosts if host and not is_loopback(host)]
    return found
