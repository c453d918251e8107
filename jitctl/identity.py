"""`--as USER` is who jitctl's broker user is: checked before anything is published.

jitctl authenticates to RabbitMQ as the user of `JIT_AMQP_URL`, and the daemons accept an event that
names a person only from that person's own broker user (`users[].broker_user`) or from a component
`JIT_PUBLISHERS` trusts to assert people for that event type (shared/trust.py). So `--as carol` with
credentials that are not carol's is refused here, with the reason, instead of being dead-lettered there.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from jitctl.common import CliError
from shared.cli import USAGE
from shared.db.models import User
from shared.settings import Settings
from shared.trust import broker_user, refusal


def check_as(settings: Settings, session: Session, person: str, event_type: str) -> None:
    me = broker_user(settings.amqp_url)
    reason = refusal(event_type, me, settings.allowed_publishers(event_type), person,
                     lambda who: session.scalar(select(User.broker_user).where(User.id == who)))
    if reason is not None:
        raise CliError(f"--as {person} refused: {reason}. Use {person}'s own broker credentials in JIT_AMQP_URL",
                       USAGE)
