"""contrib/: the Prometheus alert rules and the Grafana dashboard, held to what rackwatch serves.

Every metric and label that their queries name must be in a real `/metrics` scrape of a state
file with two cycles behind it (one rack of passes and failures, one in an incident), so a
renamed metric or a misspelt label fails here rather than leave an alert that never fires. The
rules file must also be YAML with what Prometheus needs of each rule, and the dashboard JSON that
Grafana can import on any Prometheus data source.

PromQL is read with a small reader that is enough for names, not a parser: strings, label
matchers, ranges and grouping clauses are taken out first; a name before `(` is a function,
which must be one of PromQL's; every other name is a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rackwatch.config import ScheduleSettings
from rackwatch.metrics import start_metrics
from rackwatch.simlab import Behaviour
from rackwatch.store import Store
from tests.harness import LabFactory, rack

B = Behaviour
CONTRIB = Path(__file__).parent.parent / "contrib"
RULES = CONTRIB / "prometheus" / "rackwatch-rules.yml"
DASHBOARD = CONTRIB / "grafana" / "rackwatch-dashboard.json"

# Series that Prometheus itself makes for each scrape target, with their labels.
PROMETHEUS_OWN = {"up": {"job", "instance"}}
# PromQL's functions and aggregation operators (prometheus.io/docs/prometheus/latest/querying/).
PROMQL_FUNCTIONS = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv exp floor histogram_avg histogram_count histogram_fraction
    histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta
    increase irate label_join label_replace last_over_time ln log10 log2 mad_over_time
    max_over_time min_over_time minute month pi predict_linear present_over_time
    quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh
    time timestamp vector year
    avg bottomk count count_values group limit_ratio limitk max min quantile stddev stdvar sum
    topk
    """
FUNCTIONS = frozenset(PROMQL_FUNCTIONS.split())
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# Go's time.ParseDuration as Prometheus restricts it: units from years down to milliseconds.
DURATION = re.compile(r"(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "limit", "query_offset", "labels", "rules"}
# Grafana's own variables, which it fills in every query.
GRAFANA_VARIABLES = {"__interval", "__interval_ms", "__range", "__rate_interval", "__range_s"}


@dataclass
class Names:
    """The names one PromQL expression uses."""

    metrics: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    # (metric, label) for each matcher of a selector; metric "" for a selector without a name
    matched: set[tuple[str, str]] = field(default_factory=set)
    grouped: set[str] = field(default_factory=set)  # labels of by, without, on, ignoring, ...


def promql_names(expr: str) -> Names:
    """The metrics, functions and labels that a PromQL expression names."""
    names = Names()
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    for metric, matchers in re.findall(rf"({NAME})?\s*\{{([^}}]*)\}}", text):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            names.matched.add((metric, label))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    for labels in re.findall(GROUPING, text):
        names.grouped |= {label.strip() for label in labels.split(",") if label.strip()}
    text = re.sub(GROUPING, " ", text)
    names.functions = set(re.findall(rf"(?<![\w.$])({NAME})\s*\(", text))
    text = re.sub(rf"(?<![\w.$]){NAME}\s*\(", "(", text)
    words = set(re.findall(rf"(?<![\w.$]){NAME}", text))
    names.metrics = words - KEYWORDS - {"group_left", "group_right"}
    names.metrics |= {metric for metric, _ in names.matched if metric}
    return names


def problems(
    expr: str, served: dict[str, set[str]], *, also_labels: AbstractSet[str] = frozenset()
) -> list[str]:
    """What in `expr` the scrape does not serve: metrics, labels, functions PromQL lacks."""
    known = {**served, **PROMETHEUS_OWN}
    names = promql_names(expr)
    found = [f"no such function {name}()" for name in sorted(names.functions - FUNCTIONS)]
    found += [f"no such metric {name}" for name in sorted(names.metrics - set(known))]
    for metric, label in sorted(names.matched):
        if metric in known and label not in known[metric] | {"__name__"}:
            found.append(f"{metric} has no label {label}")
    labels = set().union(*(known.get(metric, set()) for metric in names.metrics))
    found += [f"no metric of it has a label {label}" for label in sorted(names.grouped - labels)]
    found += [f"no metric of it has a label {label}" for label in sorted(also_labels - labels)]
    return found


@pytest.fixture
async def scraped(served: LabFactory) -> dict[str, set[str]]:
    """Every sample name of a real scrape, with the label names it carries."""
    harness = await served([rack("r1", B.PASS, B.FAIL, B.PASS), rack("r2", B.FAIL, B.FAIL, B.FAIL)])
    await harness.cycle()
    await harness.cycle()
    with Store.open(harness.state_file) as store:
        endpoint = await start_metrics(store, ("127.0.0.1", 0), lambda: True)
        try:
            url = f"http://127.0.0.1:{endpoint.port}/metrics"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert response.status == 200
                text = await response.text()
        finally:
            await endpoint.stop()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def rules() -> list[dict[str, Any]]:
    """Every rule of the rules file, of every group."""
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, also those inside a collapsed row."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for each panel query, and for each `label_values(...)` variable."""
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        called = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_]\w*)\s*\)", query.strip())
        assert called, f"variable {variable['name']}: {query}"
        # As PromQL: the selector, with the label it lists as a grouping label.
        found.append((f"variable {variable['name']}", f"sum by ({called[2]}) ({called[1]})"))
    return found


def test_the_scrape_serves_every_metric_the_readme_lists(scraped: dict[str, set[str]]) -> None:
    """The scrape the other tests check against has samples of all nine metrics, labels and all."""
    assert scraped == {
        "rackwatch_agent_health": {"rack", "agent", "state"},
        "rackwatch_agent_last_check_timestamp_seconds": {"rack", "agent"},
        "rackwatch_agent_consecutive_failures": {"rack", "agent"},
        "rackwatch_agent_last_provision_seconds": {"rack", "agent"},
        "rackwatch_rack_incident": {"rack"},
        "rackwatch_rack_last_cycle_timestamp_seconds": {"rack"},
        "rackwatch_rack_cycle_duration_seconds": {"rack"},
        "rackwatch_checks_total": {"rack", "outcome"},
        "rackwatch_upstream_errors_total": {"service"},
    }


def test_every_name_the_rules_use_is_served(scraped: dict[str, set[str]]) -> None:
    """Each rule's expression, and each `$labels.X` of its annotations, names what is served."""
    found = {}
    for rule in rules():
        templated = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule.get("annotations", {}))))
        if trouble := problems(rule["expr"], scraped, also_labels=templated):
            found[rule["alert"]] = trouble
    assert found == {}


def test_the_rules_file_has_what_prometheus_needs() -> None:
    """Groups with names and rules; each an alert with an expression, a duration, string labels."""
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    groups = document["groups"]
    assert groups, "no groups"
    assert len({group["name"] for group in groups}) == len(groups)
    for group in groups:
        assert set(group) <= GROUP_KEYS, group["name"]
        assert isinstance(group["name"], str) and group["name"]
        assert group["rules"], group["name"]
        alerts = [rule["alert"] for rule in group["rules"]]
        assert len(set(alerts)) == len(alerts), alerts
        for rule in group["rules"]:
            where = rule.get("alert")
            assert set(rule) <= RULE_KEYS, where
            assert "alert" in rule and "record" not in rule, where  # only alerts here
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", rule["alert"]), where
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), where
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    assert isinstance(rule[key], str), where
                    assert rule[key] and DURATION.fullmatch(rule[key]), (where, rule[key])
            for key in ("labels", "annotations"):
                mapping = rule.get(key, {})
                assert all(LABEL_NAME.fullmatch(name) for name in mapping), (where, key)
                assert all(isinstance(value, str) for value in mapping.values()), (where, key)
            assert {"summary", "description"} <= set(rule["annotations"]), where
            assert rule["labels"]["severity"] in {"warning", "critical"}, where


def test_the_rules_cover_what_a_lab_expects() -> None:
    """Unhealthy for an hour, a rack incident, two intervals unchecked, upstream errors rising."""
    by_name = {rule["alert"]: rule for rule in rules()}
    assert by_name["RackwatchAgentUnhealthy"]["for"] == "1h"
    assert 'rackwatch_agent_health{state="unhealthy"}' in by_name["RackwatchAgentUnhealthy"]["expr"]
    assert "rackwatch_rack_incident" in by_name["RackwatchRackIncident"]["expr"]
    assert (
        "increase(rackwatch_upstream_errors_total"
        in by_name["RackwatchUpstreamErrorsRising"]["expr"]
    )
    # Two of the default schedule.interval, in seconds as the expression writes them.
    hours = 2 * ScheduleSettings().interval / timedelta(hours=1)
    not_checked = by_name["RackwatchRackNotChecked"]["expr"]
    assert not_checked == f"time() - rackwatch_rack_last_cycle_timestamp_seconds > {hours:g} * 3600"


def test_every_name_the_dashboard_uses_is_served(scraped: dict[str, set[str]]) -> None:
    """Each panel's query, and the rack variable's, names what is served."""
    queries = dashboard_queries(dashboard())
    assert len(queries) > 5
    found = {where: trouble for where, expr in queries if (trouble := problems(expr, scraped))}
    assert found == {}


def test_the_dashboard_shows_what_a_lab_expects() -> None:
    """Health per rack, incidents, last cycle age, cycle duration, checks by outcome, upstream."""
    used = set().union(*(promql_names(expr).metrics for _, expr in dashboard_queries(dashboard())))
    assert {
        "rackwatch_agent_health",
        "rackwatch_rack_incident",
        "rackwatch_rack_last_cycle_timestamp_seconds",
        "rackwatch_rack_cycle_duration_seconds",
        "rackwatch_checks_total",
        "rackwatch_upstream_errors_total",
    } <= used


def test_the_dashboard_imports_on_any_prometheus() -> None:
    """Unique panel ids on a 24-column grid, every query on the data source variable."""
    board = dashboard()
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in panels(board)]
    assert len(set(ids)) == len(ids)
    for panel in panels(board):
        where = panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("x", "y", "w", "h")), where
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
        assert panel["type"] and panel["datasource"] == source, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == source and target["expr"].strip(), where
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= set(variables) | GRAFANA_VARIABLES, (where, used)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('rackwatch_agent_health{state="unhealthy"} == 1', []),
        ("rackwatch_agent_healht == 1", ["no such metric rackwatch_agent_healht"]),
        ('rackwatch_agent_health{stat="unhealthy"}', ["rackwatch_agent_health has no label stat"]),
        ("sum by (rak) (rackwatch_rack_incident)", ["no metric of it has a label rak"]),
        ("increse(rackwatch_checks_total[1h])", ["no such function increse()"]),
        ('up{job="rackwatch"} == 0', []),
        ("time() - rackwatch_rack_last_cycle_timestamp_seconds offset 1h > 12 * 3600", []),
        ('sum by (outcome) (increase(rackwatch_checks_total{rack=~"$rack"}[$__interval]))', []),
    ],
)
def test_the_name_reader_finds_what_is_not_served(expr: str, expected: list[str]) -> None:
    """A misspelt metric, label or function is reported; strings, ranges, numbers are not names."""
    served = {
        "rackwatch_agent_health": {"rack", "agent", "state"},
        "rackwatch_rack_incident": {"rack"},
        "rackwatch_rack_last_cycle_timestamp_seconds": {"rack"},
        "rackwatch_checks_total": {"rack", "outcome"},
    }
    assert problems(expr, served) == expected
