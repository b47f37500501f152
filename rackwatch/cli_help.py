"""The long help of each `rackwatch` command: what it does, what it prints, what it exits with.

`COMMANDS` gives each command's one-line summary (for `rackwatch --help`), an example of it and
its long help, which `rackwatch <command> --help` prints as it is laid out here. Plain values
only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RUN_HELP = """\
Check every configured rack every schedule.interval, until stopped: the systemd service.
SIGTERM or SIGINT stops it, leaving the jobs in flight recorded for the next start (a second
signal exits at once, with 128 + its number); SIGHUP re-reads the configuration.

Each cycle of a rack holds the rack's lock (a file in <state_file>.locks/), so that no other
rackwatch checks the rack meanwhile. A rack that another process holds (a run-once) is checked
as soon as that process lets it go.

The daemon exits when its state file is deleted or replaced under it, and when 3 cycles in a
row fail on the file (disk full, a corrupt file), so that a restart opens it afresh; systemd
restarts it.

Exits 0 when stopped by a signal; 73 when the state file cannot be created at start; 74 when
the state file was lost or stays unusable; 78 on a configuration error."""

RUN_ONCE_HELP = """\
Check the named racks (default: every configured rack) together, once, and wait for every
job. Prints a table per rack and a summary line; --json prints the same as data.

Only one rackwatch process checks a rack at a time: run-once first takes the lock of every rack
it checks (a file in <state_file>.locks/). When another rackwatch (the daemon, or another
run-once) is checking one of them, it exits 75 at once, naming that process, and submits
nothing; with --wait it waits until the racks are free instead. --dry-run takes no lock: it
submits nothing and records nothing.

Exits 0 when every checked agent passed (skips are not failures); 1 when at least one check
failed, timed out or ended in error; 2 on a usage error; 69 when a rack could not be checked
(MAAS or Testflinger unreachable, credentials refused, unknown tag); 73 when the state file
cannot be created; 75 when another rackwatch is checking a rack; 78 on a configuration error;
130 when interrupted (the jobs stay recorded for the next run)."""

STATUS_HELP = """\
Show where each agent and rack stands, read from the state file. Safe while the daemon runs:
the file is opened read-only.

A header per rack gives its last cycle (when it started, its status and how long it took, or
"running") and when the next one is due, then its open rack incident, if any ("⚠ rack
incident for 2h 0m: ..."). Then one row per agent:
  HEALTH         healthy, unhealthy, excluded (cannot be checked) or unknown, and for how
                 long; for an unhealthy agent, DETAIL says why, with the job that made it so
  LAST OUTCOME   the outcome of its latest finished check, and WHEN that check ended
  FAILURES       its checks that failed or timed out in a row, counting back from the latest
                 to its last pass; skips and errors neither end nor extend the run
  PASS RATE      passes among its latest 10 checks that passed, failed or timed out
  PROVISION      the median time from submission to end of its latest 10 passed jobs;
                 "slower ×2.3" when the latest took twice that or more (with 3 passes)
  LAST PASSED    when its latest passed check ended ("never" if none did)
  JOB IN FLIGHT  the id of its rackwatch job that has no outcome yet
Then the rack's drift, by each agent's latest check: machines with no agent, agents gone
stale (for how long their checks have found them so), and machines MAAS marks Broken or
Failed (deployment, testing, commissioning, ...), beside their agent's health. An agent is
listed under the rack of its latest check. The racks are those named, else every configured
rack and every rack recorded in the state file.

--unhealthy lists only what needs a person: unhealthy agents; agents out of service by their
own failure (stale, quarantined for a fail streak, or set offline by a failed recovery; not
those an admin took offline or into maintenance, nor those without a queue of their own);
machines MAAS marks broken or failed; and open rack incidents. Its first line says how many,
or "nothing needs a person". It exits 1 when it lists anything, so it can drive a cron mail
or a Nagios check.

--json prints {"racks": [{"rack", "last_cycle", "next_check", "incident", "drift",
"agents"}]}: last_cycle is null or {"started_at", "finished_at", "status", "error",
"duration_s"} (status "running" until it ends), next_check is null for a rack that is not
configured, incident is null or {"opened_at", "reason"}, drift is {"no_agent": [machine],
"stale": [{"agent", "since"}], "maas": [{"agent", "machine", "maas_status"}]}, and each agent
is {"agent", "machine", "health": {"state", "since", "reason", "job_id"}, "last_outcome",
"last_checked_at", "consecutive_failures", "pass_rate": {"passed", "judged"},
"median_provision_s", "last_provision_s", "last_passed_at", "job_in_flight", "maas_status",
"detail"}. With --unhealthy, only the racks and agents it lists. Times are UTC ISO 8601.

Exits 0, also when no check is recorded yet; with --unhealthy, 1 when anything needs a
person; 2 for a named rack that is neither configured nor recorded; 66 when the state file
cannot be read."""

HISTORY_HELP = """\
Show one agent's checks, newest first: when each started (UTC), its rack, outcome, job id,
provision_status, how long its job took, and the detail. Read-only, like status.

--json prints {"agent", "checks": [{"rack", "machine", "outcome", "job_id", "queue",
"provision_status", "detail", "created_at", "submitted_at", "finished_at", "duration_s",
"late_result"}]}; outcome is null while the job is in flight; late_result is null unless the
check's job ran on after the check ended (a timeout), and then says what became of it, e.g.
"seen ended 3h 12m after its timeout, provision_status 0". Times are UTC ISO 8601.

Exits 0; 1 when the state file holds no check of the agent; 66 when it cannot be read."""

CHECK_CONFIG_HELP = """\
Check the configuration file, then try it out: list each configured rack's machines from
MAAS, log in to Testflinger when client_id is set, and list Testflinger's agents. Prints one
line per check and never a secret. Submits nothing and writes no state.

Exits 0 when every check passed; 69 when MAAS or Testflinger failed one (the last line names
which); 78 when the configuration is invalid."""

ALERTS_TEST_HELP = """\
Send one test message to the webhook in alerts.webhook_url (a Mattermost or Slack incoming
webhook), naming this host. Prints "sent", or why the webhook failed; never the URL, which
carries the webhook's token.

Exits 0 when the webhook accepted the message; 69 when it failed; 78 when alerts.webhook_url
is not set or the configuration is invalid."""


@dataclass(frozen=True, slots=True)
class CommandHelp:
    """What a command says of itself."""

    summary: str  # one line; with a capital and a full stop, the description when `text` is None
    example: str
    text: str | None = None  # the description, laid out by hand


# By the command's words after `rackwatch`.
COMMANDS: Mapping[str, CommandHelp] = {
    "run": CommandHelp(
        "check every configured rack on its schedule, until stopped (the systemd service)",
        "rackwatch run --config /etc/rackwatch/config.toml",
        RUN_HELP,
    ),
    "run-once": CommandHelp(
        "check racks once and wait for every job",
        "rackwatch run-once tor3-a --config ./rackwatch.toml",
        RUN_ONCE_HELP,
    ),
    "demo": CommandHelp("run a whole cycle against a built-in simulated lab", "rackwatch demo"),
    "status": CommandHelp(
        "show each agent's health and recent checks, rack incidents and drift",
        "rackwatch status tor3-a --config /etc/rackwatch/config.toml",
        STATUS_HELP,
    ),
    "history": CommandHelp(
        "show an agent's checks, newest first",
        "rackwatch history tor3-a-m07 --limit 50",
        HISTORY_HELP,
    ),
    "check-config": CommandHelp(
        "validate the configuration and try MAAS and Testflinger with it",
        "rackwatch check-config --config /etc/rackwatch/config.toml",
        CHECK_CONFIG_HELP,
    ),
    "alerts": CommandHelp(
        "work with the webhook that health changes are announced to",
        "rackwatch alerts test --config /etc/rackwatch/config.toml",
    ),
    "alerts test": CommandHelp(
        "send a test message to the configured webhook",
        "rackwatch alerts test --config /etc/rackwatch/config.toml",
        ALERTS_TEST_HELP,
    ),
}
