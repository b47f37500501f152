"""When each rack is checked: pure functions of the rack's name, its last cycle and `now`.

Each rack has a stable offset within `schedule.jitter`, hashed from its name (like Jenkins'
`H`), so racks first checked together do not all hit MAAS at the same moment. A rack checked
less than an interval ago waits for the rest of that interval, which carries its offset across
restarts; a rack that is overdue is checked once, at once.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta


def rack_offset(rack: str, jitter: timedelta) -> timedelta:
    """A stable delay in [0, jitter) for the rack, the same in every process."""
    digest = hashlib.sha256(rack.encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return jitter * fraction


def next_check(
    rack: str,
    last_started: datetime | None,
    *,
    now: datetime,
    interval: timedelta,
    jitter: timedelta,
) -> datetime:
    """When the rack's next cycle is due, given when its last one started."""
    if last_started is None:
        return now + rack_offset(rack, jitter)
    return max(last_started + interval, now)
