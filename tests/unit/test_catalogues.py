"""The log-event and audit-action catalogues (docs/logs.md, docs/audit.md) list exactly what the code emits.

Names are collected from the source: literal first arguments of `log.<level>(...)`, the periodic jobs'
`<name>.failed`, and the few names passed through a variable, each declared below with its values so that a
new indirect call site fails this test until it is declared and documented.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from shared.states import Trigger

REPO = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("shared", "services", "jitctl", "winrm_sim") for p in sorted((REPO / d).rglob("*.py"))]
LEVELS = "debug|info|warning|error|exception|critical"
LOG_CALL = re.compile(rf"\blog\.({LEVELS})\(\s*([^,)\s]+)")
DOTTED = re.compile(r"[a-z_]+(\.[a-z_]+)+")
# Call sites whose event name is a variable (not a module constant): the values that reach them.
INDIRECT_LOGS = {
    ("services/approval/decisions.py", "action"): {"decision.refused", "decision.ignored"},
    ("services/approval/extensions.py", "action"): {"decision.refused", "decision.ignored", "decision.counted"},
    ("services/reaper/ending.py", "unknown"): {"expiry.unknown_request", "revoke.unknown_request"},
    ("shared/daemon.py", 'f"{self.name}.failed"'): set(),  # the periodic jobs: collected from Periodic("...")
    ("shared/db/outlasting.py", 'f"{self._events}.retrying"'): {"elevation.database.retrying",
                                                               "revocation.database.retrying"},
    ("shared/db/outlasting.py", 'f"{self._events}.gave_up"'): {"elevation.database.gave_up",
                                                              "revocation.database.gave_up"},
}
AUDIT_CALL = re.compile(r"audit\.record\((?:[^()]|\([^()]*\))*?action=([^,)]+)", re.S)
INDIRECT_AUDIT = {
    ("services/approval/decisions.py", "action"): {"decision.refused", "decision.ignored"},
    ("services/approval/extensions.py", "action"): {"decision.refused", "decision.ignored", "decision.counted"},
    ("services/approval/extensions.py", "Trigger.EXTEND.value"): {Trigger.EXTEND.value},
    ("shared/db/transitions.py", "trigger.value"): {t.value for t in Trigger},
}


def _documented(page: str) -> set[str]:
    """Names in the first column of the page's tables: | `name` | ..."""
    return set(re.findall(r"^\| `([a-z_.]+)` \|", (REPO / "docs" / page).read_text(), re.M))


def constants() -> dict[str, str]:
    """Module constants holding a dotted name (PARKED = "decision.parked", or A, B = "x.y", "x.z"), from every
    source file."""
    found: dict[str, str] = {}
    for path in SOURCES:
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                continue
            target, value = node.targets[0], node.value
            pairs = (zip(target.elts, value.elts, strict=False) if isinstance(target, ast.Tuple)
                     and isinstance(value, ast.Tuple) else [(target, value)])
            for name, const in pairs:
                if (isinstance(name, ast.Name) and name.id.isupper() and isinstance(const, ast.Constant)
                        and isinstance(const.value, str) and DOTTED.fullmatch(const.value)):
                    found[name.id] = const.value
    return found


def _resolve(rel: str, first: str, indirect: dict[tuple[str, str], set[str]], seen: set[tuple[str, str]]) -> set[str]:
    if first.startswith('"') and first.endswith('"'):
        return {first.strip('"')}
    known = constants()
    if first in known:
        return {known[first]}
    assert (rel, first) in indirect, f"{rel}: name {first} is a variable: declare its values in this test"
    seen.add((rel, first))
    return indirect[(rel, first)]


def logged_names() -> set[str]:
    names = {"library.log"}  # stdlib records of libraries, re-emitted by shared/logs.py
    seen_indirect = set()
    for path in SOURCES:
        text = path.read_text()
        rel = str(path.relative_to(REPO))
        for _level, first in LOG_CALL.findall(text):
            names |= _resolve(rel, first, INDIRECT_LOGS, seen_indirect)
        names |= {f"{n}.failed" for n in re.findall(r'Periodic\(\s*"([a-z_.]+)"', text)}
    assert seen_indirect == set(INDIRECT_LOGS), "a declared indirect call site is gone: remove it here"
    return names


def audit_actions() -> set[str]:
    actions: set[str] = set()
    seen: set[tuple[str, str]] = set()
    for path in SOURCES:
        rel = str(path.relative_to(REPO))
        for first in AUDIT_CALL.findall(path.read_text()):
            actions |= _resolve(rel, first.strip(), INDIRECT_AUDIT, seen)
    assert seen == set(INDIRECT_AUDIT), "a declared indirect call site is gone: remove it here"
    return actions


def test_every_log_event_is_catalogued_and_nothing_else() -> None:
    names = logged_names()
    documented = _documented("logs.md")
    assert names - documented == set(), "add these to docs/logs.md"
    assert documented - names == set(), "docs/logs.md lists events the code no longer emits"


def test_log_event_names_are_dotted_nouns_with_consistent_prefixes() -> None:
    for name in logged_names():
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", name), name
        assert not name.startswith(("approval.", "elevator.", "reaper.")), \
            f"{name}: the daemon is in the line's `daemon` field, not in the event name"


def test_every_audit_action_is_catalogued_and_nothing_else() -> None:
    actions = audit_actions()
    documented = _documented("audit.md")
    assert actions - documented == set(), "add these to docs/audit.md"
    assert documented - actions == set(), "docs/audit.md lists actions the code no longer records"
