"""The state file: cycles and the checks made in them, in one SQLite database.

Every write is its own committed transaction, written before the method returns, so a process
killed at any moment leaves a state the next run can resume: a job's id is recorded before the
job is submitted, and a job with no outcome yet is picked up again. The database itself keeps
at most one unfinished job per agent.

The store is synchronous; writes in WAL mode take well under a millisecond, so async code calls
it directly. This package imports only the standard library and `rackwatch.model`/`errors`.

`Store` is the one object callers use. Each of its parts is a `Database` subclass that holds the
queries of one concern, and `Store` inherits them all, so they share its one connection:

- `_db`: the connection, migrating, transactions, the StoreError mapping and the time codec;
- `_migrations`: the schema, step by step;
- `records`: the record types and the row → record converters;
- `cycles`: the job ledger, cycles and their checks;
- `health`: health, transitions, incidents, facts and inventory;
- `outbox`: the alerts outbox and the counters;
- `views`: the status and trend read-models;
- `silences`: the agents and racks silenced, and until when;
- `marks`: each agent's status and trend, kept current with its checks;
- `retention`: pruning in short steps, and the checks counted by day.
"""

from __future__ import annotations

from rackwatch.store._db import exists
from rackwatch.store._migrations import MIGRATIONS
from rackwatch.store.cycles import Cycles
from rackwatch.store.health import HealthRecords
from rackwatch.store.outbox import Outbox
from rackwatch.store.records import (
    AgentFigures,
    AgentState,
    AgentTrend,
    AlertRecord,
    CheckRecord,
    CycleRecord,
    DayRecord,
    IncidentRecord,
)
from rackwatch.store.retention import Pruned, Retention
from rackwatch.store.silences import Silenced, Silences
from rackwatch.store.views import Views

__all__ = [
    "Store",
    "CheckRecord",
    "CycleRecord",
    "AgentState",
    "IncidentRecord",
    "AlertRecord",
    "AgentTrend",
    "AgentFigures",
    "DayRecord",
    "Pruned",
    "Silenced",
    "MIGRATIONS",
    "exists",
]


class Store(Cycles, HealthRecords, Outbox, Views, Silences, Retention):
    """The state file, opened once. Also a context manager that closes it."""
