"""tools/reliability.py renders what tests/reliability_record.py writes: every row tried, every invariant, the
soak slot (empty or filled), and refuses a folder with no results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability_record import Record
from tools.reliability import load, main, render


def two_cases(folder: Path) -> None:
    for case, ok in (("sqlite", True), ("postgresql", False)):
        record = Record("dead-letters", case, command="pytest x", size={"n": 2})
        record.tried("poison body: a|b", kind="bad input", count=2, outcome="dead-lettered", ok=ok)
        record.checked("queue keeps flowing", ok=ok, detail="3 processed")
        record.write(folder)
    (folder / "unrelated.json").write_text("{}")


def test_rows_of_one_thing_add_up_across_cases_and_a_failure_shows(tmp_path: Path) -> None:
    two_cases(tmp_path)
    results = load(tmp_path)
    assert [r["case"] for r in results] == ["postgresql", "sqlite"]
    page = render(results, tmp_path / "no-soak.json", tmp_path)
    assert "| dead-letters (postgresql, sqlite) | poison body: a\\|b | bad input | 4 | dead-lettered | **NO** |" in page
    assert "| dead-letters | sqlite | queue keeps flowing | yes | 3 processed |" in page
    assert "not run yet" in page and "nproc" in page


def test_a_soak_result_fills_its_slot(tmp_path: Path) -> None:
    two_cases(tmp_path)
    soak = tmp_path / "soak.json"
    soak.write_text(json.dumps({"date": "d", "cores": 2, "minutes": 30, "rate": 5, "warmup_minutes": 3, "ok": True,
                                "daemons": {"reaper": {"rss_kb": {"start": 100, "end": 102, "max": 110,
                                                                  "growth_pct": 2.0, "ok": True}}},
                                "outbox_backlog": {"start": 1, "end": 1, "max": 4, "growth_pct": 0.0, "ok": True}}))
    page = render(load(tmp_path), soak, tmp_path)
    assert "| jit-reaper rss_kb | 100 | 102 | 110 | 2.0 | yes |" in page and "| outbox backlog |" in page


def test_no_results_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--results", str(tmp_path), "--out", str(tmp_path / "out.md")])
