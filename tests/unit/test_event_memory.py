"""Parsing events keeps nothing of them: pydantic-core's string cache would otherwise hold the last 16,384
ids a daemon validated (~1.2 MB; bench/memory.py saw it as RSS growth)."""

from __future__ import annotations

import gc
import tracemalloc

from shared.events import new_event, parse_event

EVENTS = 17_000  # more than the cache holds, so that it is full


def test_parsed_events_leave_nothing_behind() -> None:
    bodies = [new_event("secret.checked_in", {"checkout_id": f"co-{i:08d}-memory", "secret_id": f"sec-{i:08d}",
                                              "reason": "service_closed"}, source="test").to_json()
              for i in range(EVENTS)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for body in bodies:
            parse_event(body)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 64 * 1024, f"{retained} bytes kept after parsing {EVENTS} events"
