"""`jitctl extend`: the operator's way to ask for time and to decide an extension, through the running jit-approval."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from jitctl.main import main
from shared.db.models import Extension
from shared.settings import Settings
from tests.conftest import settings_env
from tests.integration.approval_harness import World, configure, poll, world_running
from tests.integration.test_extensions import approved

pytestmark = [pytest.mark.rabbitmq]


@pytest.fixture
def world(settings: Settings, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    with world_running(settings, factory) as running_world:
        yield running_world


def jitctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def extension_state(world: World, extension_id: str) -> str | None:
    with world.factory() as s:
        ext = s.get(Extension, extension_id)
        return ext.state if ext is not None else None


def test_ask_then_approve_an_extension(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    configure(world.factory, extension="approval")
    row = approved(world)
    code, out, err = jitctl(capsys, "extend", row.id, "--as", "alice", "--seconds", "900", "--justification",
                            "second reboot", "--extension-id", "ext-ops-1")
    assert code == 0 and "published elevation.extend_requested" in out and "ext-ops-1" in out, err
    poll(lambda: extension_state(world, "ext-ops-1") == "PENDING", 10, "extension recorded")
    code, out, err = jitctl(capsys, "extend", row.id, "--as", "bob", "--approve", "ext-ops-1", "--json")
    assert code == 0 and '"decision": "approve"' in out, err
    poll(lambda: extension_state(world, "ext-ops-1") == "EXTENDED", 10, "extension granted")
    assert world.tap.wait_for("elevation.extended", row.id)[0]["data"]["approver_id"] == "bob"
    code, _, err = jitctl(capsys, "extend", row.id, "--as", "bob", "--deny", "ext-ops-1", "--reason", "late")
    assert code == 1 and "extension ext-ops-1 is already EXTENDED" in err


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["extend", "req-none", "--as", "alice", "--seconds", "60", "--justification", "x"], 1, "no request 'req-none'"),
    (["extend", "REQ", "--as", "zed", "--seconds", "60", "--justification", "x"], 1, "unknown user 'zed'"),
    (["extend", "REQ", "--as", "alice", "--seconds", "60"], 2, "needs --seconds N and --justification"),
    (["extend", "REQ", "--as", "alice", "--seconds", "0", "--justification", "x"], 2,
     "duration_seconds: Input should be greater than 0"),
    (["extend", "REQ", "--as", "bob", "--deny", "ext-x"], 1, "no extension 'ext-x'"),
])
def test_mistakes_are_one_line_without_a_traceback(world: World, capsys: pytest.CaptureFixture[str],
                                                   argv: list[str], code: int, message: str) -> None:
    row = approved(world)
    got, _, err = jitctl(capsys, *[row.id if a == "REQ" else a for a in argv])
    assert (got, message in err, "Traceback" in err) == (code, True, False), err
