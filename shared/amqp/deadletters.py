"""Dead letters alert: a periodic look at this daemon's `<queue>.dead`, an error line while it holds messages.

A dead-lettered message is one the daemons gave up on (poison, or the delivery limit burned); nothing
acts on it until a person does. So it must never be silent: every `interval`, while the queue is not
empty, `deadletters.present` is logged at error level with the count (and when it grows).
"""

from __future__ import annotations

from shared import metrics
from shared.amqp.connection import CONNECTION_ERRORS, close_quietly, connect
from shared.amqp.topology import dead_letter_queue
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger()


class DeadLetterWatch:
    def __init__(self, settings: Settings, daemon: str) -> None:
        self.settings = settings
        self.daemon = daemon
        self.queue = dead_letter_queue(settings, daemon)
        self.last_count = 0

    def count(self) -> int:
        connection = connect(self.settings.amqp_url, name=f"jit-{self.daemon} dead-letter watch")
        try:
            declared = connection.channel().queue_declare(self.queue, passive=True)
            return int(declared.method.message_count)
        finally:
            close_quietly(connection)

    def __call__(self) -> None:
        try:
            count = self.count()
        except CONNECTION_ERRORS as exc:
            log.warning("deadletters.unknown", queue=self.queue, error=repr(exc))
            return
        if count:
            log.error("deadletters.present", queue=self.queue, count=count, new=max(count - self.last_count, 0),
                      hint="inspect and replay them; see docs/reaper.md")
        self.last_count = count
        metrics.DEAD_LETTERS.labels(queue=self.queue).set(count)
