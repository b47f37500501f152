"""The state file's schema, step by step: each step of MIGRATIONS brings a database from
`user_version` N-1 to N (counting from 1). Append, never edit: a file in use has the steps
before. This module imports nothing.
"""

from __future__ import annotations

# Step N (counting from 1) brings a database from `user_version` N-1 to N. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE cycles (
        id INTEGER PRIMARY KEY,
        rack TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT,
        error TEXT
    );
    CREATE TABLE checks (
        id INTEGER PRIMARY KEY,
        cycle_id INTEGER NOT NULL REFERENCES cycles(id),
        rack TEXT NOT NULL,
        agent TEXT NOT NULL,
        machine TEXT,
        queue TEXT,
        job_id TEXT,
        outcome TEXT,
        detail TEXT NOT NULL DEFAULT '',
        provision_status INTEGER,
        created_at TEXT NOT NULL,
        submitted_at TEXT,
        finished_at TEXT
    );
    CREATE UNIQUE INDEX checks_unfinished_agent ON checks(agent) WHERE outcome IS NULL;
    CREATE INDEX checks_agent ON checks(agent, created_at);
    CREATE INDEX checks_cycle ON checks(cycle_id);
    CREATE INDEX cycles_rack ON cycles(rack, started_at);
    """,
    # `status` finds each agent's last pass, and the failures since, without reading its history.
    """
    CREATE INDEX checks_agent_outcome ON checks(agent, outcome, created_at);
    """,
    # Health over time: each agent's state, its transitions, rack incidents, alerts to deliver.
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        rack TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        closed_at TEXT,
        reason TEXT NOT NULL
    );
    CREATE UNIQUE INDEX incidents_open ON incidents(rack) WHERE closed_at IS NULL;
    ALTER TABLE cycles ADD COLUMN incident_id INTEGER REFERENCES incidents(id);
    ALTER TABLE checks ADD COLUMN maas_status TEXT;
    CREATE TABLE health (
        agent TEXT PRIMARY KEY,
        rack TEXT NOT NULL,
        state TEXT NOT NULL,
        since TEXT,
        reason TEXT NOT NULL DEFAULT '',
        job_id TEXT
    );
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        cycle_id INTEGER NOT NULL REFERENCES cycles(id),
        rack TEXT NOT NULL,
        agent TEXT NOT NULL,
        before TEXT NOT NULL,
        after TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT NOT NULL,
        job_id TEXT
    );
    CREATE INDEX transitions_agent ON transitions(agent, at);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        cycle_id INTEGER NOT NULL UNIQUE REFERENCES cycles(id),
        rack TEXT NOT NULL,
        created_at TEXT NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        delivered_at TEXT,
        last_error TEXT
    );
    CREATE INDEX alerts_pending ON alerts(id) WHERE delivered_at IS NULL;
    CREATE TABLE counters (
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (name, labels)
    );
    """,
    # One job per queue, told by Testflinger: the file's identity goes into its jobs' tags, a
    # job is found by its id, and a check whose job may run on after it ended is followed up.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('identity', lower(hex(randomblob(6))));
    ALTER TABLE checks ADD COLUMN lingering INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE checks ADD COLUMN late_result TEXT;
    CREATE INDEX checks_job ON checks(job_id) WHERE job_id IS NOT NULL;
    CREATE INDEX checks_lingering ON checks(rack) WHERE lingering = 1;
    """,
    # A health keeps the outcome that gave its reason: the rules read it, never the reason's
    # text. A health's `since` is the end of the check that made it, which tells the outcome.
    """
    ALTER TABLE health ADD COLUMN outcome TEXT;
    UPDATE health SET outcome = (
        SELECT c.outcome FROM checks c
        WHERE c.agent = health.agent AND c.finished_at = health.since
        ORDER BY c.id DESC LIMIT 1
    ) WHERE since IS NOT NULL;
    """,
    # Why a check failed (the end of its provision output), cycles of a few named agents
    # only, and silences: an agent or a whole rack that is checked but not announced.
    """
    ALTER TABLE checks ADD COLUMN provision_log TEXT;
    ALTER TABLE cycles ADD COLUMN partial INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE silences (
        id INTEGER PRIMARY KEY,
        agent TEXT,
        rack TEXT,
        reason TEXT NOT NULL,
        by_user TEXT NOT NULL,
        created_at TEXT NOT NULL,
        until TEXT NOT NULL,
        ended_at TEXT,
        settled INTEGER NOT NULL DEFAULT 0,
        CHECK ((agent IS NULL) <> (rack IS NULL))
    );
    CREATE INDEX silences_unsettled ON silences(until) WHERE settled = 0;
    """,
    # A state file that stays small, and reads that cost the same whatever history it keeps.
    # A check's row (`check_rows`) names its agent by a number (`agents`); its times are
    # integer microseconds since the epoch (UTC); its job id, a UUID, is its 16 bytes; its
    # machine and queue are "" when they are the agent's own name; a long provision log is
    # compressed. The view `checks` shows the rows as before (the job id as text). Each
    # agent's status and trend are kept in `marks`, current with every check written, which
    # replaces the index on (agent, outcome, created_at). The ended checks are counted per
    # rack and outcome in `outcomes`, and checks older than `history.keep_checks` become one
    # row per agent and day in `days` (days since the epoch).
    """
    CREATE TABLE agents (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    INSERT INTO agents (name) SELECT DISTINCT agent FROM checks ORDER BY agent;
    CREATE TABLE check_rows (
        id INTEGER PRIMARY KEY,
        cycle_id INTEGER NOT NULL REFERENCES cycles(id),
        rack TEXT NOT NULL,
        agent_id INTEGER NOT NULL REFERENCES agents(id),
        machine TEXT,
        queue TEXT,
        job_id BLOB,
        outcome TEXT,
        detail TEXT NOT NULL DEFAULT '',
        provision_status INTEGER,
        created_at INTEGER NOT NULL,
        submitted_at INTEGER,
        finished_at INTEGER,
        maas_status TEXT,
        lingering INTEGER NOT NULL DEFAULT 0,
        late_result TEXT,
        provision_log BLOB
    );
    INSERT INTO check_rows
    SELECT c.id, c.cycle_id, c.rack, a.id,
        CASE WHEN c.machine = c.agent THEN '' ELSE c.machine END,
        CASE WHEN c.queue = c.agent THEN '' ELSE c.queue END,
        c.job_id, c.outcome, c.detail, c.provision_status,
        strftime('%s', substr(c.created_at, 1, 19)) * 1000000
            + CAST(substr(c.created_at, 21, 6) AS INTEGER),
        strftime('%s', substr(c.submitted_at, 1, 19)) * 1000000
            + CAST(substr(c.submitted_at, 21, 6) AS INTEGER),
        strftime('%s', substr(c.finished_at, 1, 19)) * 1000000
            + CAST(substr(c.finished_at, 21, 6) AS INTEGER),
        c.maas_status, c.lingering, c.late_result, c.provision_log
    FROM checks AS c JOIN agents AS a ON a.name = c.agent;
    DROP TABLE checks;
    CREATE VIEW checks AS
    SELECT c.id, c.cycle_id, c.rack, a.name AS agent, c.machine, c.queue,
        CASE WHEN typeof(c.job_id) = 'blob' THEN lower(
            substr(hex(c.job_id), 1, 8) || '-' || substr(hex(c.job_id), 9, 4) || '-'
            || substr(hex(c.job_id), 13, 4) || '-' || substr(hex(c.job_id), 17, 4) || '-'
            || substr(hex(c.job_id), 21)) ELSE c.job_id END AS job_id,
        c.outcome, c.detail, c.provision_status, c.created_at, c.submitted_at, c.finished_at,
        c.maas_status, c.lingering, c.late_result, c.provision_log, c.agent_id
    FROM check_rows AS c JOIN agents AS a ON a.id = c.agent_id;
    CREATE UNIQUE INDEX checks_unfinished_agent ON check_rows(agent_id) WHERE outcome IS NULL;
    CREATE INDEX checks_agent ON check_rows(agent_id, created_at);
    CREATE INDEX checks_cycle ON check_rows(cycle_id);
    CREATE INDEX checks_job ON check_rows(job_id) WHERE job_id IS NOT NULL;
    CREATE INDEX checks_lingering ON check_rows(rack) WHERE lingering = 1;
    CREATE TABLE marks (
        agent TEXT PRIMARY KEY,
        rack TEXT NOT NULL,
        last_id INTEGER,
        open_id INTEGER,
        passed_id INTEGER,
        passed_created_at INTEGER,
        passed_at INTEGER,
        passed_s REAL,
        failures INTEGER NOT NULL DEFAULT 0,
        pruned_failures INTEGER NOT NULL DEFAULT 0,
        judged INTEGER NOT NULL DEFAULT 0,
        judged_passed INTEGER NOT NULL DEFAULT 0,
        passes TEXT NOT NULL DEFAULT '[]',
        maas_status TEXT,
        stale_since INTEGER
    );
    CREATE TABLE outcomes (
        rack TEXT NOT NULL,
        outcome TEXT NOT NULL,
        checks INTEGER NOT NULL,
        PRIMARY KEY (rack, outcome)
    ) WITHOUT ROWID;
    INSERT INTO outcomes (rack, outcome, checks)
    SELECT rack, outcome, count(*) FROM check_rows WHERE outcome IS NOT NULL
    GROUP BY rack, outcome;
    CREATE TABLE days (
        agent_id INTEGER NOT NULL REFERENCES agents(id),
        day INTEGER NOT NULL,
        rack TEXT NOT NULL,
        checks INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        timed_out INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        provision_ms INTEGER NOT NULL,
        PRIMARY KEY (agent_id, day)
    ) WITHOUT ROWID;
    CREATE INDEX transitions_cycle ON transitions(cycle_id);
    """,
)
