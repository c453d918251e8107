"""Fault injection plan for one simulated host: rules matched per WS-Man action, each with a count.

Kinds: ``delay`` (sleep ``seconds`` then carry on), ``http500`` (HTTP ``status`` with a non-SOAP body),
``wsman`` (a WSManFault from :data:`winrm_sim.soap.FAULTS`: TimedOut, Quota, InternalError,
AccessDenied, InvalidSelectors), ``auth`` (HTTP 401, credentials rejected), ``drop`` (close the TCP
connection without an answer). ``action`` is Create, Command, Receive, Signal, Delete or ``*``;
``count`` is how many requests it hits (``None``: until cleared).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

KINDS = ("delay", "http500", "wsman", "auth", "drop")
ACTIONS = ("*", "Create", "Command", "Receive", "Signal", "Delete")


@dataclass
class FaultRule:
    kind: str
    action: str = "*"
    count: int | None = 1
    fault: str = "InternalError"
    seconds: float = 0.0
    status: int = 500
    hits: int = field(default=0)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}")

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "action": self.action, "count": self.count, "fault": self.fault,
                "seconds": self.seconds, "status": self.status, "hits": self.hits}


class FaultPlan:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, action: str) -> tuple[float, FaultRule | None]:
        """Consume the rules for this request: total delay, and the first terminal fault (if any)."""
        delay = 0.0
        terminal = None
        with self._lock:
            for rule in list(self._rules):
                if rule.action not in ("*", action) or (rule.kind != "delay" and terminal is not None):
                    continue
                rule.hits += 1
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
                if rule.kind == "delay":
                    delay += rule.seconds
                else:
                    terminal = rule
        return delay, terminal
