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
signal exits at once, with 128 + its number); SIGHUP re-reads the configuration. At start it
logs each warning that check-config prints (event config.warning).

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

--agent NAME (again for more) checks only the named agents, after a fix for example: their
racks are found among the named racks (default: the configured ones) by MAAS's machines, only
they get jobs and rows, and the rest of the rack is not recorded. Such a partial cycle leaves
the rack's schedule and its incidents as they are. A name no rack holds is a usage error.

A rack's line reads ok, failures (a check failed, timed out or ended in error), error (the
rack could not be listed) or attention: ok, but an agent is stale or quarantined and needs a
person (the exit code stays 0). The summary counts the agents not checkable (stale,
quarantined, no queue) apart from those set offline by an admin. A failed or timed-out check's
DETAIL ends with the line of its job's provision log that says why, after a colon:
"provisioning exited 1 (device connector error): ... ERROR: MAAS deployment of ... failed".

--json prints {"racks": [{"rack", "status", "error", "started_at", "finished_at", "agents":
[{"agent", "machine", "outcome", "job_id", "provision_status", "detail", "duration_s",
"provision_log", "url"}]}]}: provision_log is the end of a failed or timed-out job's provision
output (its last 20 lines that say something, secrets scrubbed), else null; url is the job's
page in Testflinger's web UI, <testflinger.web_url or testflinger.url>jobs/<job_id>, null
without a job.

Only one rackwatch process checks a rack at a time: run-once first takes the lock of every rack
it checks (a file in <state_file>.locks/). When another rackwatch (the daemon, or another
run-once) is checking one of them, it exits 75 at once, naming that process, and submits
nothing; with --wait it waits until the racks are free instead. --dry-run takes no lock: it
submits nothing and records nothing. Before the cycle, run-once logs each warning that
check-config prints (event config.warning).

Exits 0 when every checked agent passed (skips are not failures); 1 when at least one check
failed, timed out or ended in error; 2 on a usage error; 69 when a rack could not be checked
(MAAS or Testflinger unreachable, credentials refused, unknown tag); 73 when the state file
cannot be created; 75 when another rackwatch is checking a rack; 78 on a configuration error;
130 when interrupted (the jobs stay recorded for the next run)."""

DEMO_HELP = """\
Tell rackwatch's story on a simulated lab (MAAS and Testflinger on 127.0.0.1, three racks of
eight machines), in five cycles run with the same code as run-once: machines pass; one fails
twice and is announced unhealthy; a failed switch opens a rack incident, which the next cycle
closes while the ill machine is announced recovered; MAAS marks a machine Broken, which is
drift. It prints a line for each change as its cycle records it, then the last cycle's report
(--json: as run-once --json prints it, with the story on stderr).

Its configuration (rackwatch.toml) and state file (state.db) stay in DIR (default: a new
temporary directory, named in the output), for status, history and silence --list to explore
once the lab is gone: rackwatch status --config DIR/rackwatch.toml.

Exits 0 when the story ran as designed; 1 when a step did not happen (a line names it); 2 when
DIR is not a new or empty directory."""

STATUS_HELP = """\
Show where each agent and rack stands, read from the state file. Safe while the daemon runs:
the file is opened read-only.

A header per rack gives its last cycle (when it started, its status and how long it took, or
"running"; the status is ok, failures, error, interrupted, or attention: ok, but an agent is
stale or quarantined) and when the next one is due, then its open rack incident, if any ("⚠ rack
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
  DETAIL         its latest check's detail; for a failed or timed-out job, then the line of
                 its provision log that says why ("...: ERROR: MAAS deployment ... failed")
Then the rack's drift, by each agent's latest check: machines with no agent, agents gone
stale (for how long their checks have found them so), and machines MAAS marks Broken or
Failed (deployment, testing, commissioning, ...), beside their agent's health. An agent is
listed under the rack of its latest check. The racks are those named, else every configured
rack and every rack recorded in the state file.

A silenced rack has a line under its header ("rack silenced until 2026-12-08 20:31 UTC by
alice: new switch"); an agent silenced on its own has "(silenced)" in HEALTH and such a line
under the table (see rackwatch silence).

--unhealthy lists only what needs a person: unhealthy agents; agents out of service by their
own failure (stale, quarantined for a fail streak, or set offline by a failed recovery; not
those an admin took offline or into maintenance, nor those without a queue of their own);
machines MAAS marks broken or failed; and open rack incidents. Its first line says how many,
or "nothing needs a person". It exits 1 when it lists anything, so it can drive a cron mail
or a Nagios check. While a silence lasts, it leaves out the agents it covers, and for a
silenced rack the rack's incident too.

On a terminal, status fits its width ($COLUMNS, else the terminal's own): DETAIL is cut first,
then HEALTH and AGENT, "…" ending what is cut; when that is not enough, JOB IN FLIGHT,
PROVISION, PASS RATE, LAST PASSED, WHEN and FAILURES are left out, in that order, and a line
under the tables says so. Headings are never cut; other lines are wrapped. --wide shows every
column and every cell whole. Piped or into a file, status is never narrowed, so that scripts
read the same lines from any terminal. HEALTH and LAST OUTCOME are coloured on a terminal:
healthy and passed green; unhealthy, failed and error red; excluded, timed_out, stale,
quarantined, no_queue and no_agent yellow. No colour when piped, nor when NO_COLOR is set
and not empty (https://no-color.org), nor for TERM=dumb. Control characters in what MAAS, an
agent or an admin wrote show as escapes (\\x1b, \\n) in all text; --json keeps them exact.

--watch [SECONDS] redraws the status in place every SECONDS (default: 5), reading the state
file afresh each time, until Ctrl-C, which exits 0. Name racks before it: status r1 --watch.
Piped, each frame follows the one before. It does not go with --json.

--json prints {"racks": [{"rack", "last_cycle", "next_check", "incident", "drift",
"agents"}]}: last_cycle is null or {"started_at", "finished_at", "status", "error",
"duration_s"} (status "running" until it ends), next_check is null for a rack that is not
configured, incident is null or {"opened_at", "reason"}, drift is {"no_agent": [machine],
"stale": [{"agent", "since"}], "maas": [{"agent", "machine", "maas_status"}]}, and each agent
is {"agent", "machine", "health": {"state", "since", "reason", "job_id"}, "last_outcome",
"last_checked_at", "consecutive_failures", "pass_rate": {"passed", "judged"},
"median_provision_s", "last_provision_s", "last_passed_at", "job_in_flight", "maas_status",
"detail", "silence"}; silence is null or, while one covers the agent, {"until", "by",
"reason", "rack"}, rack null for the agent's own silence and the rack's name for its rack's.
With --unhealthy, only the racks and agents it lists. Times are UTC ISO 8601.

Exits 0, also when no check is recorded yet, and at Ctrl-C with --watch; with --unhealthy,
1 when anything needs a person; 2 for a named rack that is neither configured nor recorded or
--watch with --json; 66 when the state file cannot be read."""

HISTORY_HELP = """\
Show one agent's checks, newest first: when each started (UTC), its rack, outcome, job id,
provision_status, how long its job took, and the detail. Under a check with a job, indented:
"job:" and the job's page in Testflinger's web UI, then, for a failed or timed-out job,
"log:" and the last 3 lines of its provision log; --log shows the log whole (the last 20
lines that say something, as kept). Read-only, like status: of [testflinger] it reads only
url and web_url, and needs no secret. A silence that covers the agent shows under the first
line ("silenced until 2026-12-08 20:31 UTC by
alice: reflashing the BMC", with "(rack r1)" for its rack's silence).

--json prints {"agent", "silence", "checks": [{"rack", "machine", "outcome", "job_id", "queue",
"provision_status", "detail", "created_at", "submitted_at", "finished_at", "duration_s",
"late_result", "provision_log", "url"}]}; outcome is null while the job is in flight;
late_result is null unless the check's job ran on after the check ended (a timeout), and then
says what became of it, e.g. "seen ended 3h 12m after its timeout, provision_status 0";
provision_log is the kept end of a failed or timed-out job's provision output, else null; url
is <testflinger.web_url or testflinger.url>jobs/<job_id>, null without a job. silence is null
or, as in status --json, {"until", "by", "reason", "rack"}. Times are UTC ISO 8601.

Exits 0; 1 when the state file holds no check of the agent; 66 when it cannot be read."""

WEB_HELP = """\
Serve the lab's pages from the state file, read-only, until SIGINT or SIGTERM: on a lab host
beside the daemon, or on a workstation with a copy of the file. Like status, it needs no
credentials and no lab, and writes nothing. It prints the address once it listens.

  /                    every rack as a grid of its agents, each cell coloured by health
                       (healthy, unhealthy, excluded with its reason, unknown, silenced;
                       outlined when it needs a person), with each rack's last and next
                       cycle, open incident, drift and counts; ?rack=NAME and ?person=1
                       (only what needs a person) filter it
  /racks/RACK          the rack's agents, with their pass rate and provisioning time
  /agents/AGENT        the agent's health, since when and why, its outcomes and its
                       provisioning time over time, and its latest checks with their job
                       links and provision logs
  /api/status          the JSON of status --json
  /api/agents/AGENT    the JSON of history AGENT --json (?limit=N, default 20)

Only GET and HEAD are served. The pages reload themselves every 30 s. The daemon serves the
same pages, with /metrics and /healthz, at web.listen when that is set.

--listen HOST:PORT (port 0: any free port) overrides the address; without it, web.listen (or
metrics.listen), else 127.0.0.1:9464. There is no TLS and no login: on a lab host, keep it on
127.0.0.1 and reach it through ssh -L 9464:127.0.0.1:9464 lab-host, then open
http://127.0.0.1:9464/.

Exits 0 when stopped by a signal; 2 on a usage error; 66 when the state file cannot be read
(one that does not exist yet is waited for: the pages say so); 78 on a configuration error,
or when it cannot listen at the address (the line names the setting it came from)."""

CHECK_CONFIG_HELP = """\
Check the configuration file, then try it out: see that this user could write the state file
(or create it, and its folder), list each configured rack's machines from MAAS, log in to
Testflinger when client_id is set, and list Testflinger's agents. Prints one line per check
and never a secret. Submits nothing and writes nothing: a missing state file is not created.

Lines starting "warning:" name what works but deserves a look, as run-once and run log them at
start: secrets in a file that others may read or write, a listener on every interface, MAAS's
token secret or Testflinger's login sent over http://, deprecated settings, and agent records
that lack the fields stale or quarantine detection needs. Warnings do not change the exit code.

Exits 0 when every check passed; 69 when the state file, MAAS or Testflinger failed one (the
last line names which); 78 when the configuration is invalid."""

SILENCE_HELP = """\
Silence agents, or whole racks, for a while: they are still checked and their health still
recorded, but their changes are not announced to the webhook, and status --unhealthy (and its
exit code) leaves them out. A rack's silence (--rack) covers every agent of the rack, the
rack's incidents and its agents' drift. status and history show "silenced until 2026-12-08
20:31 UTC by alice: reflashing the BMC".

Every silence ends: after --for DURATION (90s, 2h, 3d, 1h30m: the configuration's durations),
at --until TIME (ISO 8601: 2026-12-08T20:31 is UTC, 2026-12-08T20:31+01:00 has an offset, a
date alone is its midnight UTC), else after 7 days; it may last at most 90 days. When it ends,
or unsilence ends it, the first cycle of its rack after that announces, once, each agent it
covered that is still unhealthy ("still unhealthy after its silence ended: ..."), and for a
rack an incident still open.

--reason is required: it is kept with who ran the command ($SUDO_USER under sudo, else the
login name). An agent must have been checked at least once, under its name as status lists
it; a rack must be configured or have been checked. Silencing what is silenced replaces its
silence. Safe while the daemon runs; the state file must exist (the daemon or run-once makes
it), and only state_file is read from the configuration.

--list prints the silences in force: what, until when, by whom, since when and why. With
--json: {"silences": [{"agent", "rack", "until", "by", "reason", "created_at"}]}, agent null
for a rack's silence and rack null for an agent's. Times are UTC ISO 8601.

Exits 0; 2 on a usage error (an unknown agent or rack, no reason, a time that has passed, a
silence longer than 90 days), and then nothing is silenced; 66 when the state file does not
exist (--list: cannot be read; with no file, it lists none); 73 when it cannot be written."""

UNSILENCE_HELP = """\
End silences now: each named agent's own silence, and with --rack each named rack's. An agent
whose rack's silence goes on stays silenced, and a line says so. The first cycle of the rack
after that announces, once, each agent the silence covered that is still unhealthy.

Safe while the daemon runs, like silence.

Exits 0 when each agent and rack named had a silence in force; 1 when one had none (a line
names it; the others are ended); 2 on a usage error; 66 when the state file does not exist;
73 when it cannot be written."""

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
    "demo": CommandHelp(
        "tell rackwatch's story in a few cycles of a built-in simulated lab, and keep its state",
        "rackwatch demo --dir ./rackwatch-demo",
        DEMO_HELP,
    ),
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
    "web": CommandHelp(
        "serve the lab's pages (racks, agents, their history) from the state file, read-only",
        "rackwatch web --listen 127.0.0.1:9464",
        WEB_HELP,
    ),
    "check-config": CommandHelp(
        "validate the configuration, try the state file, MAAS and Testflinger with it",
        "rackwatch check-config --config /etc/rackwatch/config.toml",
        CHECK_CONFIG_HELP,
    ),
    "silence": CommandHelp(
        "keep agents or racks out of the alerts and of status --unhealthy for a while",
        "rackwatch silence tor3-a-m07 --reason 'BMC replaced, RT#4411' --for 3d",
        SILENCE_HELP,
    ),
    "unsilence": CommandHelp(
        "end the silence of agents or racks now",
        "rackwatch unsilence tor3-a-m07",
        UNSILENCE_HELP,
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
