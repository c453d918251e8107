"""Liveness and readiness: what `/healthz`, `/readyz` and `jit-<daemon> --check` answer.

Liveness (`/healthz`): the process answers and none of its long-lived threads is wedged. Each such
thread (the consumer's connection loop, each periodic job, the outbox relay) owns a `Heartbeat` and
beats at least once per turn; a long job beats between its items through `beat()`, a no-op on threads
that own none. A thread that has not beaten for `stale_after` seconds is wedged, and Kubernetes (or
an operator) should restart the process.

Readiness (`/readyz` and `--check`): the database answers and is at the schema's head revision, every
credential source the configuration names is readable (daemons that talk WinRM only), and the broker
is reachable. `/readyz` reads the running consumer (connected and consuming); `--check`, run before
the daemon starts, connects once instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from alembic.script import ScriptDirectory
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.credentials import CredentialError, resolve_password
from shared.db.migrate import alembic_config
from shared.db.models import CredentialProvider

# A turn of any watched thread is bounded well below this: a WinRM call by its deadline (60 s), a
# reconnect backoff by 10 s, one reconciled target by four call bounds.
DEFAULT_STALE_SECONDS = 300.0
# The daemons that call WinRM and so need the credential providers' passwords.
NEEDS_CREDENTIALS = frozenset({"elevator", "reaper"})


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Heartbeat:
    def __init__(self, name: str, stale_after: float = DEFAULT_STALE_SECONDS) -> None:
        self.name = name
        self.stale_after = stale_after
        self.last = time.monotonic()
        self.stopped = False

    def beat(self) -> None:
        self.last = time.monotonic()

    def stale(self, now: float) -> bool:
        return not self.stopped and now - self.last > self.stale_after


class Liveness:
    """The heartbeats of one process's threads."""

    def __init__(self) -> None:
        self._beats: list[Heartbeat] = []
        self._lock = threading.Lock()

    def heartbeat(self, name: str, stale_after: float = DEFAULT_STALE_SECONDS) -> Heartbeat:
        beat = Heartbeat(name, stale_after)
        with self._lock:
            self._beats.append(beat)
        return beat

    def checks(self) -> list[Check]:
        now = time.monotonic()
        with self._lock:
            beats = list(self._beats)
        return [Check(b.name, not b.stale(now), f"last beat {now - b.last:.1f}s ago") for b in beats]


_current = threading.local()


def own(heartbeat: Heartbeat) -> None:
    """Make `heartbeat` the calling thread's, so that `beat()` on this thread reaches it."""
    _current.heartbeat = heartbeat


def beat() -> None:
    """Called by long jobs between items; does nothing on a thread without a heartbeat."""
    heartbeat: Heartbeat | None = getattr(_current, "heartbeat", None)
    if heartbeat is not None:
        heartbeat.beat()


def database_check(factory: sessionmaker[Session], database_url: str) -> Check:
    """The database answers and its Alembic revision is the head this code was built for."""
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    try:
        with factory() as session:
            current = session.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        return Check("database", False, f"not reachable or no schema ({type(exc).__name__}); "
                                        "has `jitctl db upgrade` run?")
    if current != head:
        return Check("database", False, f"schema at revision {current}, this code needs {head}: run "
                                        "`jitctl db upgrade`")
    return Check("database", True, f"reachable, schema at head {head}")


def credentials_check(factory: sessionmaker[Session]) -> Check:
    """Every credential provider's password source is readable now (the values are read and dropped)."""
    try:
        with factory() as session:
            providers = session.execute(select(CredentialProvider.id, CredentialProvider.password_env,
                                               CredentialProvider.password_file)).all()
    except Exception as exc:
        return Check("credentials", False, f"cannot list credential providers ({type(exc).__name__})")
    problems = []
    for provider_id, password_env, password_file in providers:
        try:
            resolve_password(provider_id, password_env, password_file)
        except CredentialError as exc:
            problems.append(str(exc))
    if problems:
        return Check("credentials", False, "; ".join(problems))
    return Check("credentials", True, f"{len(providers)} credential provider(s) readable")


def readiness(daemon: str, factory: sessionmaker[Session], database_url: str,
              broker: Callable[[], Check]) -> list[Check]:
    """The checks `/readyz` and `--check` share; `broker` differs (the running consumer, or one connection)."""
    checks = [database_check(factory, database_url)]
    if daemon in NEEDS_CREDENTIALS:
        checks.append(credentials_check(factory))
    checks.append(broker())
    return checks


def report(checks: Sequence[Check]) -> str:
    return "\n".join(f"{'ok' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in checks) + "\n"
