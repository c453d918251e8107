"""The reconciler's target row is written only when the way to reach the host changes.

Every grant's hold passes through `ledger.watch`; rewriting the one (host, group) row per grant (its
snapshot names the grant's account) made every grant on a host wait for the previous one's commit on
that row's lock (seen in bench/burst.py as `Lock: transactionid` waits on `UPDATE reconcile_targets`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.db import ledger
from shared.db.engine import transaction
from shared.db.models import ReconcileTarget
from shared.db.targets import Target
from shared.winrm import HostEndpoint

HOST, GROUP = "10.0.0.5", "S-1-5-32-544"


def snapshot(account: str, port: int = 5985) -> dict[str, Any]:
    return Target(HostEndpoint(HOST, scheme="http", port=port, transport="ntlm"), "prov", "CORP\\svc-jit",
                  "JIT_CRED_X", None, account, GROUP, "report").snapshot()


def watch(factory: sessionmaker[Session], target: dict[str, Any]) -> list[str]:
    """Run one watch in its own transaction; the UPDATE statements it sent to reconcile_targets."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE reconcile_targets"):
            sent.append(statement)

    engine = factory.kw["bind"]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with transaction(factory) as session:
            ledger.watch(session, host=HOST, group_sid=GROUP, target=target, now=datetime.now(UTC), interval=300)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return sent


def stored(factory: sessionmaker[Session]) -> dict[str, Any]:
    with transaction(factory) as session:
        row = session.get(ReconcileTarget, (HOST, GROUP))
        assert row is not None and row.target is not None
        return dict(row.target)


def test_another_account_on_the_same_host_does_not_rewrite_the_target(factory: sessionmaker[Session]) -> None:
    watch(factory, snapshot("acct-a"))
    assert watch(factory, snapshot("acct-b")) == []
    assert stored(factory)["account"] == "acct-a"


def test_a_new_way_to_reach_the_host_is_written(factory: sessionmaker[Session]) -> None:
    watch(factory, snapshot("acct-a"))
    assert len(watch(factory, snapshot("acct-b", port=5986))) == 1
    assert stored(factory)["endpoint"]["port"] == 5986
