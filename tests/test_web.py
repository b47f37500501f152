"""The web pages over HTTP on loopback, from a state file written by real cycles on the
simulated lab: status codes, escaping, links between the pages, the /api JSON against the CLI's,
`rackwatch web` as a process, and the daemon serving the pages on its one listener."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from rackwatch.config import load_state_settings
from rackwatch.simlab import Behaviour as B
from rackwatch.simlab import SimMachine, SimRack
from rackwatch.web import StateSource, pages_app
from tests.harness import TOKEN, Daemon, Harness, LabFactory, rackwatch, until, write_config
from tests.test_metrics import free_port

# Upstream and admin-written texts that would run in a page if they were not escaped.
EVIL_HOST = "r1-m3<script>alert(1)"  # a MAAS hostname, so in its provision log too
EVIL_COMMENT = '<script>alert("offline")</script>'  # an admin's comment on an offline agent
WEB_PASSWORD = "hunter2-web-password"


@dataclass
class Site:
    harness: Harness
    config: Path
    url: str  # of the pages, ending with "/"


@dataclass
class Page:
    status: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)


class Links(HTMLParser):
    """The links of a page, and each agent cell of the lab grid as (agent, classes, label)."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.cells: dict[str, tuple[set[str], str]] = {}
        self._cell: tuple[set[str], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.hrefs.append(found["href"] or "")
        classes = set((found.get("class") or "").split())
        if tag == "a" and "cell" in classes:
            self._cell = (classes, [])

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._cell is not None:
            classes, texts = self._cell
            self.cells[texts[0]] = (classes, " ".join(texts[1:]))
            self._cell = None


def parse(text: str) -> Links:
    links = Links()
    links.feed(text)
    return links


async def fetch(url: str, method: str = "GET") -> Page:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        return Page(response.status, await response.text(), dict(response.headers))


@pytest.fixture
async def site(served: LabFactory, tmp_path: Path) -> AsyncIterator[Site]:
    """Two cycles of a lab with two failing agents (one with a hostname that is a script), an
    agent set offline with a script as its comment, and the pages served from the state file."""
    harness = await served(
        [
            SimRack(
                "r1",
                [
                    SimMachine("r1-m1", B.PASS),
                    SimMachine("r1-m2", B.FAIL),
                    SimMachine(EVIL_HOST, B.FAIL),
                    SimMachine("r1-m4", B.PASS),
                    SimMachine("r1-m5", B.PASS),
                    SimMachine("r1-m6", B.PASS),
                ],
            ),
            SimRack("r2", [SimMachine("r2-m1", B.PASS), SimMachine("r2-m2", B.PASS)]),
        ]
    )
    harness.lab.set_agent_state("r1-m4", "offline", EVIL_COMMENT)
    for _ in range(2):  # two failures in a row: unhealthy
        await harness.cycle()
    config = write_config(
        tmp_path / "rackwatch.toml",
        harness.lab,
        harness.urls,
        harness.state_file,
        testflinger=f'web_url = "http://viewer:{WEB_PASSWORD}@testflinger.example/"',
    )
    settings = load_state_settings(config)
    server = TestServer(pages_app(StateSource(settings.state_file), lambda: settings))
    await server.start_server()
    try:
        yield Site(harness, config, str(server.make_url("/")))
    finally:
        await server.close()


async def test_the_lab_page_colours_each_agent_by_its_health(site: Site) -> None:
    """/ shows every rack, each agent a cell of its health's colour, excluded with its reason."""
    page = await fetch(site.url)
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    cells = parse(page.text).cells
    assert set(cells) == {"r1-m1", "r1-m2", EVIL_HOST, "r1-m4", "r1-m5", "r1-m6", "r2-m1", "r2-m2"}
    assert "healthy" in cells["r1-m1"][0]
    assert {"unhealthy", "person"} <= cells["r1-m2"][0]
    assert {"unhealthy", "person"} <= cells[EVIL_HOST][0]
    assert "excluded" in cells["r1-m4"][0]
    assert "person" not in cells["r1-m4"][0]  # an admin took it offline: no person needed
    assert cells["r1-m4"][1].startswith("offline")
    for rack in ("r1", "r2"):
        assert f'<a href="/racks/{rack}">{rack}</a>' in page.text
    assert "2 unhealthy" in page.text


async def test_the_filters_keep_a_rack_or_what_needs_a_person(site: Site) -> None:
    """?rack=NAME shows that rack alone; ?person=1 only the agents that need a person."""
    only_r2 = parse((await fetch(site.url + "?rack=r2")).text).cells
    assert set(only_r2) == {"r2-m1", "r2-m2"}
    needing = parse((await fetch(site.url + "?person=1")).text).cells
    assert set(needing) == {"r1-m2", EVIL_HOST}
    assert (await fetch(site.url + "?rack=no-such-rack")).status == 404


async def test_a_silenced_agent_has_the_silenced_colour(site: Site) -> None:
    """An agent under a silence is silenced in the grid, and needs no person meanwhile."""
    done = await rackwatch(
        "silence", "r1-m2", "--reason", "<b>new BMC</b>", "--config", str(site.config)
    )
    assert done.code == 0, done.err
    page = await fetch(site.url)
    classes, _ = parse(page.text).cells["r1-m2"]
    assert "silenced" in classes
    assert "person" not in classes
    assert "&lt;b&gt;new BMC&lt;/b&gt;" in page.text
    assert "<b>new BMC" not in page.text


async def test_the_pages_follow_the_state_file_as_cycles_record(site: Site) -> None:
    """A page read again after more cycles shows what they recorded: r2-m1 turns unhealthy."""
    before = parse((await fetch(site.url)).text).cells
    assert "healthy" in before["r2-m1"][0]
    site.harness.lab.set_behaviour("r2-m1", B.FAIL)
    for _ in range(2):
        await site.harness.cycle(["r2"])
    after = parse((await fetch(site.url)).text).cells
    assert "unhealthy" in after["r2-m1"][0]
    status = json.loads((await fetch(site.url + "api/status")).text)
    [r2] = [rack for rack in status["racks"] if rack["rack"] == "r2"]
    [m1] = [agent for agent in r2["agents"] if agent["agent"] == "r2-m1"]
    assert m1["health"]["state"] == "unhealthy"


async def test_before_the_first_check_the_pages_say_so(tmp_path: Path) -> None:
    """Without a state file yet, / says so, a configured rack's page is empty, an agent 404."""
    config = tmp_path / "rackwatch.toml"
    config.write_text(f'racks = ["r1"]\nstate_file = "{tmp_path / "none.db"}"\n')
    settings = load_state_settings(config)
    server = TestServer(pages_app(StateSource(settings.state_file), lambda: settings))
    await server.start_server()
    try:
        lab = await fetch(str(server.make_url("/")))
        rack = await fetch(str(server.make_url("/racks/r1")))
        agent = await fetch(str(server.make_url("/agents/r1-m1")))
        status = await fetch(str(server.make_url("/api/status")))
    finally:
        await server.close()
    assert lab.status == 200
    assert f"no checks recorded yet: {tmp_path / 'none.db'} does not exist" in lab.text
    assert (rack.status, agent.status) == (200, 404)
    assert "never checked" in rack.text
    assert json.loads(status.text)["racks"][0]["rack"] == "r1"


async def test_every_link_between_the_pages_resolves(site: Site) -> None:
    """Every link of the lab, rack and agent pages to a page of ours answers 200."""
    seen: set[str] = set()
    queue = [site.url]
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        page = await fetch(url)
        assert page.status == 200, url
        for href in parse(page.text).hrefs:
            if href.startswith("/"):
                queue.append(site.url.rstrip("/") + href)
            else:  # the job links, to Testflinger's web UI
                assert href.startswith("http://testflinger.example/jobs/"), href
    paths = {unquote(urlsplit(url).path) for url in seen}
    assert {"/racks/r1", "/racks/r2", "/agents/r1-m2", f"/agents/{EVIL_HOST}"} <= paths
    assert "/api/status" in paths


async def test_upstream_and_admin_texts_are_escaped_everywhere(site: Site) -> None:
    """A hostname that is a script (in its provision log too) and an admin's script comment
    show as text on every page: the only script tag is the page's own."""
    texts = {}
    for path in ["", "racks/r1", "agents/r1-m4", "agents/r1-m3%3Cscript%3Ealert(1)"]:
        page = await fetch(site.url + path)
        assert page.status == 200, path
        assert page.text.count("<script") == 1, path  # /static/refresh.js
        assert '<script src="/static/refresh.js" defer></script>' in page.text
        texts[path] = page.text
    agent = texts["agents/r1-m3%3Cscript%3Ealert(1)"]
    assert "r1-m3&lt;script&gt;alert(1)" in agent
    # Its provision log, in the check's excerpt.
    assert "Releasing node r1-m3&lt;script&gt;alert(1)" in agent
    assert "&lt;script&gt;alert(&#34;offline&#34;)&lt;/script&gt;" in texts["agents/r1-m4"]
    assert "&lt;script&gt;alert(&#34;offline&#34;)" in texts[""]  # in its cell's tooltip
    # The lab's link to the agent is percent-encoded.
    assert 'href="/agents/r1-m3%3Cscript%3Ealert%281%29"' in texts[""]
    page = await fetch(site.url)
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


async def test_no_page_carries_a_secret(site: Site) -> None:
    """Job links leave out the user:password of testflinger.web_url, and no page shows a key."""
    key = site.harness.lab.maas_api_key
    agent = await fetch(site.url + "agents/r1-m2")
    assert "http://testflinger.example/jobs/" in agent.text
    for path in ["", "racks/r1", "agents/r1-m2", "api/status", "api/agents/r1-m2"]:
        text = (await fetch(site.url + path)).text
        assert WEB_PASSWORD not in text, path
        assert key not in text and key.rsplit(":", 1)[-1] not in text, path


async def test_the_agent_page_says_why_and_draws_both_pictures(site: Site) -> None:
    """An unhealthy agent's page: since when and why, its checks, the strip and the chart."""
    page = await fetch(site.url + "agents/r1-m2")
    assert page.status == 200
    assert '<span class="badge unhealthy">unhealthy</span>' in page.text
    assert "unhealthy since " in page.text
    assert "why: failed: provisioning exited 1 (device connector error)" in page.text
    assert "MAAS deployment of r1-m2 failed" in page.text  # its error line, and its log
    strip = page.text.split('<svg class="strip"')[1].split("</svg>")[0]
    assert strip.count('<rect class="failed"') == 2
    chart = page.text.split('<svg class="chart"')[1].split("</svg>")[0]
    assert chart.count('<circle class="failed"') == 2


async def test_the_rack_page_shows_pass_rate_and_provisioning_side_by_side(site: Site) -> None:
    """/racks/r1 lists its agents with their pass rate and provisioning time."""
    page = await fetch(site.url + "racks/r1")
    assert page.status == 200
    assert 'aria-label="pass rate 2/2"' in page.text  # r1-m1
    assert 'aria-label="pass rate 0/2"' in page.text  # r1-m2
    assert page.text.count('<rect class="provision"') == 3  # the three that passed
    assert '<a href="/agents/r1-m1">r1-m1</a>' in page.text


async def test_only_get_and_head_are_served(site: Site) -> None:
    """Another method is 405 with Allow; any other path, and an unknown rack or agent, 404."""
    for method, path in [("POST", ""), ("PUT", "api/status"), ("DELETE", "agents/r1-m1")]:
        page = await fetch(site.url + path, method)
        assert page.status == 405, (method, path)
        assert set(page.headers["Allow"].split(",")) == {"GET", "HEAD"}
    head = await fetch(site.url, "HEAD")
    assert (head.status, head.text) == (200, "")
    for path in ["nope", "racks/nope", "agents/nope", "racks/r1/more", "static/other.css"]:
        assert (await fetch(site.url + path)).status == 404, path
    api = await fetch(site.url + "api/agents/nope")
    assert api.status == 404
    assert json.loads(api.text) == {"error": "no checks of agent 'nope' recorded"}


async def test_the_api_answers_what_the_cli_prints(site: Site) -> None:
    """/api/status is status --json and /api/agents/<agent> is history --json."""
    cli = await rackwatch("status", "--json", "--config", str(site.config))
    api = await fetch(site.url + "api/status")
    assert api.headers["Content-Type"].startswith("application/json")
    assert json.loads(api.text) == json.loads(cli.out)
    for agent, path in [("r1-m2", "r1-m2"), (EVIL_HOST, "r1-m3%3Cscript%3Ealert(1)")]:
        cli = await rackwatch("history", agent, "--json", "--config", str(site.config))
        assert cli.code == 0, cli.err
        assert json.loads((await fetch(site.url + f"api/agents/{path}")).text) == json.loads(
            cli.out
        )
    one = json.loads((await fetch(site.url + "api/agents/r1-m2?limit=1")).text)
    assert len(one["checks"]) == 1
    assert (await fetch(site.url + "api/agents/r1-m2?limit=zero")).status == 400


async def start_web(
    *args: str, prefix: tuple[str, ...] = ()
) -> tuple[asyncio.subprocess.Process, str]:
    """`rackwatch web ARGS` as a process, and the URL its first line names."""
    process = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "rackwatch",
        "web",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
    if not line:
        _, err = await process.communicate()
        pytest.fail(f"rackwatch web printed nothing: {err.decode()}")
    return process, line.split(" at ")[1].split()[0]


async def test_rackwatch_web_serves_the_pages_until_sigterm(site: Site) -> None:
    """`rackwatch web --listen 127.0.0.1:0` names its URL, serves the pages, exits 0 at SIGTERM;
    a second one on the same port says so on one line and exits 78."""
    process, url = await start_web("--config", str(site.config), "--listen", "127.0.0.1:0")
    try:
        lab = await fetch(url)
        assert lab.status == 200
        assert set(parse(lab.text).cells) >= {"r1-m1", "r2-m1"}
        port = urlsplit(url).port
        taken = await rackwatch(
            "web", "--config", str(site.config), "--listen", f"127.0.0.1:{port}"
        )
        assert taken.code == 78
        assert taken.err.splitlines() == [
            f"rackwatch: configuration error: --listen: cannot listen on 127.0.0.1 port {port}:"
            " Address already in use"
        ]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 0, err.decode()
    assert err.decode() == ""


async def test_rackwatch_web_reads_a_copy_in_a_folder_it_may_not_write(
    site: Site, tmp_path: Path
) -> None:
    """Without the privilege to write (root without its capabilities), a copy of the state
    file in another user's read-only folder is served as it is."""
    if shutil.which("setpriv") is None:
        pytest.fail("this test needs setpriv: apt-get install util-linux")
    config, folder = read_only_copy(site.harness.state_file, tmp_path)
    without_dac = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")
    process, url = await start_web(
        "--config", str(config), "--listen", "127.0.0.1:0", prefix=without_dac
    )
    try:
        page = await fetch(url + "agents/r1-m2")
        assert page.status == 200, page.text
        assert "unhealthy since" in page.text
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 0
    assert sorted(path.name for path in folder.iterdir()) == ["state.db"]


async def test_the_daemon_serves_the_pages_beside_the_metrics(daemon: Daemon) -> None:
    """`rackwatch run` with [web] listen serves the pages, /api, /metrics and /healthz on one
    port, none of them with a secret of its configuration."""
    port = free_port()
    daemon.config.write_text(
        daemon.config.read_text()
        + f'[alerts]\nwebhook_url = "http://127.0.0.1:9/hooks/{TOKEN}"\n'
        + f'[web]\nlisten = "127.0.0.1:{port}"\n'
    )
    await daemon.start()
    await until(lambda: daemon.cycles("r1") >= 1 and daemon.cycles("r2") >= 1)
    base = f"http://127.0.0.1:{port}/"
    await until_served(base + "agents/r2-m1")
    pages = {
        path: await fetch(base + path)
        for path in ["", "racks/r1", "agents/r2-m1", "api/status", "metrics", "healthz"]
    }
    code, _ = await daemon.stop()
    assert code == 0
    assert {path: page.status for path, page in pages.items()} == dict.fromkeys(pages, 200)
    assert set(parse(pages[""].text).cells) == {"r1-m1", "r1-m2", "r2-m1"}
    assert "rackwatch_agent_health" in pages["metrics"].text
    key = daemon.lab.maas_api_key
    for path, page in pages.items():
        assert TOKEN not in page.text and key.rsplit(":", 1)[-1] not in page.text, path


async def until_served(url: str) -> None:
    async with asyncio.timeout(20):
        while (await fetch(url)).status != 200:  # noqa: ASYNC110 - another process's listener
            await asyncio.sleep(0.1)


def read_only_copy(state_file: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the state file in another user's folder, 0555, and a configuration naming it."""
    folder = tmp_path / "copy"
    folder.mkdir()
    copy = folder / "state.db"
    with sqlite3.connect(state_file) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(state_file, copy)
    config = tmp_path / "copy.toml"
    config.write_text(f'racks = ["r1", "r2"]\nstate_file = "{copy}"\n')
    os.chown(folder, 61234, 61234)
    folder.chmod(0o555)
    copy.chmod(0o644)
    tmp_path.chmod(0o755)
    return config, folder
