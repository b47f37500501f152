"""Silences, as pure functions: which silence covers an agent at a time, what an alert leaves out
for them, which ended silences a rack cycle settles, and what it announces for them.

A silence keeps one agent, or every agent of a rack and the rack's incidents, out of the alerts
and out of `status --unhealthy` until it ends; the agents are still checked and their health
still recorded. It ends at its `until`, or earlier when unsilenced. The first cycle of its rack
settled after its end announces, once, each agent it covered that is still unhealthy (and for a
rack, an incident still open), and marks it settled.

Also the rules of the `silence` command's values: how long a silence may last, the times it
reads and the reason it keeps. This module imports only `model`, `errors` and the standard
library.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from rackwatch.errors import UsageError
from rackwatch.model import AgentHealth, AlertEvent, EventKind, Health, Silence

# Every silence ends: without --for or --until it lasts a week, and it may not last longer than
# this, so that a forgotten silence cannot hide a machine for good.
DEFAULT_LENGTH = timedelta(days=7)
LONGEST = timedelta(days=90)
REASON_LONGEST = 200  # characters: a reason is shown on one line of status and history

_INCIDENT_KINDS = frozenset({EventKind.INCIDENT_OPENED, EventKind.INCIDENT_CLOSED})


def parse_time(text: str) -> datetime:
    """An ISO 8601 time ("2026-12-08T20:31", "2026-12-08 20:31+01:00", "2026-12-08"), in UTC
    when it names no offset.

    Raises:
        UsageError: `text` is not such a time.
    """
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--until {text!r}: not an ISO 8601 time, such as 2026-12-08T20:31 (UTC) or"
            " 2026-12-08T20:31+01:00"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def end_of(now: datetime, *, length: timedelta | None, until: datetime | None) -> datetime:
    """When a silence made at `now` ends: `now + length`, or `until`, or DEFAULT_LENGTH away.

    Raises:
        UsageError: it would not end after `now`, or would last longer than LONGEST.
    """
    if length is not None and until is not None:
        raise UsageError("--for and --until say the same thing: give one of them")
    if length is not None:
        if length <= timedelta(0):
            raise UsageError("--for must be longer than 0s")
        end = now + length
    elif until is not None:
        if until <= now:
            raise UsageError(f"--until {_minute(until)} has passed")
        end = until
    else:
        end = now + DEFAULT_LENGTH
    if end - now > LONGEST:
        raise UsageError(
            f"a silence may last at most {LONGEST.days} days (until {_minute(now + LONGEST)});"
            " silence again when it ends"
        )
    return end


def clean_reason(text: str) -> str:
    """The reason as kept: on one line, its runs of blanks made one space.

    Raises:
        UsageError: it is blank, or longer than REASON_LONGEST characters.
    """
    reason = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if not reason:
        raise UsageError("--reason must say why: it is shown wherever the silence is")
    if len(reason) > REASON_LONGEST:
        raise UsageError(f"--reason is {len(reason)} characters long; at most {REASON_LONGEST}")
    return reason


def in_force(silences: Iterable[Silence], at: datetime) -> list[Silence]:
    """The silences that have not ended at `at`."""
    return [silence for silence in silences if silence.ends_at > at]


def covering(silences: Iterable[Silence], *, agent: str, rack: str, at: datetime) -> Silence | None:
    """The silence in force at `at` that covers the agent of `rack`: its own or its rack's.

    Of several, the one that lasts longest, then the agent's own.
    """
    found = [
        silence
        for silence in in_force(silences, at)
        if silence.agent == agent or (silence.agent is None and silence.rack == rack)
    ]
    return max(found, key=lambda s: (s.ends_at, s.agent is not None), default=None)


def of_rack(silences: Iterable[Silence], rack: str, at: datetime) -> Silence | None:
    """The rack's own silence in force at `at`, the one that lasts longest of several."""
    found = [s for s in in_force(silences, at) if s.agent is None and s.rack == rack]
    return max(found, key=lambda s: s.ends_at, default=None)


def is_announced(event: AlertEvent, silences: Sequence[Silence], at: datetime) -> bool:
    """Whether an alert event of a cycle settled at `at` is announced, or left out for a silence.

    An agent's events are left out while it, or its rack, is silenced; the rack's incident
    events while the rack is.
    """
    if event.agent is not None:
        return covering(silences, agent=event.agent, rack=event.rack, at=at) is None
    if event.kind in _INCIDENT_KINDS:
        return of_rack(silences, event.rack, at) is None
    return True


def due(
    silences: Iterable[Silence], *, rack: str, rack_of: Mapping[str, str], at: datetime
) -> list[Silence]:
    """The silences that a cycle of `rack` settled at `at` settles: unsettled and ended by then.

    A rack's silence is settled by a cycle of that rack; an agent's by a cycle of the rack its
    health is recorded under (`rack_of`), or by any cycle when none is: such an agent has no
    health to announce.
    """
    return [
        silence
        for silence in silences
        if not silence.settled
        and silence.ends_at <= at
        and (
            silence.rack == rack
            if silence.agent is None
            else rack_of.get(silence.agent, rack) == rack
        )
    ]


def after_silences(
    ended: Sequence[Silence],
    silences: Sequence[Silence],
    *,
    rack: str,
    health: Mapping[str, AgentHealth],
    incident: str | None,
    announced: Collection[str],
    at: datetime,
) -> list[AlertEvent]:
    """What a cycle of `rack` settled at `at` announces for the `ended` silences it settles.

    Each agent they covered that is still unhealthy, once: `health` is the health of the rack's
    agents after the cycle, and an agent among `announced` (announced unhealthy by the cycle
    itself) or still covered by another of `silences` is left out. For a rack's silence, the
    rack's incident too, when one is still open (`incident`, its reason) and the rack not
    silenced again.
    """
    events: list[AlertEvent] = []
    agents: set[str] = set()
    rack_ended = False
    for silence in ended:
        if silence.agent is None:
            rack_ended = True
            agents.update(health)
        elif silence.agent in health:
            agents.add(silence.agent)
    for agent in sorted(agents):
        known = health[agent]
        if known.state is not Health.UNHEALTHY or agent in announced:
            continue
        if covering(silences, agent=agent, rack=rack, at=at) is not None:
            continue
        events.append(
            AlertEvent(
                EventKind.UNHEALTHY,
                rack,
                agent=agent,
                before=str(Health.UNHEALTHY),
                after=str(Health.UNHEALTHY),
                reason=f"still unhealthy after its silence ended: {known.reason}",
                job_id=known.job_id,
            )
        )
    if rack_ended and incident is not None and of_rack(silences, rack, at) is None:
        events.insert(
            0,
            AlertEvent(
                EventKind.INCIDENT_OPENED,
                rack,
                reason=f"still open after its silence ended: {incident}",
            ),
        )
    return events


def _minute(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
