"""The pages in a real browser: Debian's headless Chromium, driven over the DevTools protocol,
loads the lab page and an agent page served from a state file of a few real cycles, and the
test asserts what a person sees there. Each page's screenshot is saved in the test's tmp dir.

Without chromium the session installs it (as root, with apt-get); when it cannot, the test
fails with one line saying what to install.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from rackwatch.config import load_state_settings
from rackwatch.simlab import Behaviour as B
from rackwatch.web import StateSource, pages_app
from tests.harness import LabFactory, rack, write_config

UNHEALTHY_RGB = "rgb(211, 47, 47)"  # --unhealthy in rackwatch.css
HEALTHY_RGB = "rgb(46, 125, 50)"  # --healthy


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium program, installed with apt-get when it is missing and this is root."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "chromium"],
        ):
            subprocess.run(command, env=env, capture_output=True, timeout=900, check=False)
        found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            "the browser test needs Debian's chromium: apt-get install chromium", pytrace=False
        )
    return found


@dataclass
class Browser:
    """One headless Chromium page, driven over the DevTools protocol."""

    socket: aiohttp.ClientWebSocketResponse
    session_id: str
    ids: itertools.count[int]

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        await self.socket.send_json(
            {"id": number, "method": method, "params": params, "sessionId": self.session_id}
        )
        async with asyncio.timeout(30):
            while True:
                message = json.loads((await self.socket.receive()).data)
                if message.get("id") == number:
                    if "error" in message:
                        raise AssertionError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result

    async def load(self, url: str) -> None:
        """Go to `url` and wait until its document has loaded (not the one before it)."""
        await self.call("Page.navigate", url=url)
        await self.poll(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
        )

    async def evaluate(self, expression: str) -> Any:
        said = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in said:
            raise AssertionError(f"{expression}: {said['exceptionDetails']}")
        return said["result"].get("value")

    async def resize(self, width: int, height: int) -> None:
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def poll(self, expression: str, timeout_s: float = 15) -> Any:
        """The expression's value once it is truthy, across reloads of the page."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    if value := await self.evaluate(expression):
                        return value
                except AssertionError:  # the page was between two documents
                    pass
                await asyncio.sleep(0.05)

    async def screenshot(self) -> bytes:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Browser]:
    process = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",  # as root
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1400,1000",
        "--remote-debugging-port=0",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(60):
            while not (line := (await process.stderr.readline()).decode()).startswith(
                "DevTools listening on "
            ):
                assert line, "chromium ended before it listened"
        address = line.split()[-1]
        async with aiohttp.ClientSession() as http, http.ws_connect(address, max_msg_size=0) as ws:
            await ws.send_json(
                {"id": 0, "method": "Target.createTarget", "params": {"url": "about:blank"}}
            )
            target = await _answer(ws, 0)
            await ws.send_json(
                {
                    "id": 1,
                    "method": "Target.attachToTarget",
                    "params": {"targetId": target["targetId"], "flatten": True},
                }
            )
            attached = await _answer(ws, 1)
            browser = Browser(ws, attached["sessionId"], itertools.count(2))
            await browser.resize(1400, 1000)
            yield browser
    finally:
        process.kill()
        await process.wait()


async def _answer(ws: aiohttp.ClientWebSocketResponse, number: int) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            message = json.loads((await ws.receive()).data)
            if message.get("id") == number:
                result: dict[str, Any] = message["result"]
                return result


async def test_a_person_sees_the_racks_the_unhealthy_cell_and_the_chart(
    served: LabFactory, browser: Browser, tmp_path: Path
) -> None:
    """In Chromium: the lab page names both racks and shows the unhealthy agent's cell red and
    a healthy one green; the agent page draws its outcome strip and its duration chart."""
    harness = await served([rack("r1", B.PASS, B.FAIL, B.PASS), rack("r2", B.PASS, B.PASS)])
    for _ in range(3):
        await harness.cycle()
    config = write_config(
        tmp_path / "rackwatch.toml", harness.lab, harness.urls, harness.state_file
    )
    settings = load_state_settings(config)
    server = TestServer(pages_app(StateSource(settings.state_file), lambda: settings))
    await server.start_server()
    try:
        await browser.load(str(server.make_url("/")))
        lab_png = await browser.screenshot()
        racks = await browser.evaluate(
            "[...document.querySelectorAll('section.rack h2 a')].map(a => a.innerText)"
        )
        cells = await browser.evaluate(
            """Object.fromEntries([...document.querySelectorAll('a.cell')].map(cell => {
                const box = cell.getBoundingClientRect();
                return [cell.querySelector('.name').innerText, {
                    colour: getComputedStyle(cell).backgroundColor,
                    visible: box.width > 40 && box.height > 10 && box.top < innerHeight,
                }];
            }))"""
        )
        await browser.load(str(server.make_url("/agents/r1-m2")))
        agent_png = await browser.screenshot()
        drawn = await browser.evaluate("""(() => {
                const size = sel => {
                    const box = document.querySelector(sel).getBoundingClientRect();
                    return [Math.round(box.width), Math.round(box.height)];
                };
                const red = [...document.querySelectorAll('svg.strip rect.failed')];
                return {
                    strip: size('svg.strip'),
                    chart: size('svg.chart'),
                    failed_bars: red.length,
                    bar_colour: red.length ? getComputedStyle(red[0]).fill : null,
                    points: document.querySelectorAll('svg.chart circle').length,
                    title: document.querySelector('h1').innerText,
                };
            })()""")
    finally:
        await server.close()
    save(tmp_path / "lab.png", lab_png)
    save(tmp_path / "agent.png", agent_png)
    assert racks == ["r1", "r2"]
    assert cells["r1-m2"] == {"colour": UNHEALTHY_RGB, "visible": True}
    assert cells["r1-m1"] == {"colour": HEALTHY_RGB, "visible": True}
    assert drawn["title"].startswith("r1-m2")
    assert drawn["strip"][0] > 400 and drawn["chart"][0] > 400 and drawn["chart"][1] > 100
    assert drawn["failed_bars"] == 3
    assert drawn["bar_colour"] == UNHEALTHY_RGB
    assert drawn["points"] == 3
    assert lab_png.startswith(b"\x89PNG") and len(lab_png) > 10_000
    assert agent_png.startswith(b"\x89PNG") and len(agent_png) > 10_000


def save(path: Path, png: bytes) -> None:
    path.write_bytes(png)
    print(f"screenshot: {path}", file=sys.stderr)


async def test_a_page_reloads_itself_and_keeps_its_scroll_position(
    served: LabFactory, browser: Browser, tmp_path: Path
) -> None:
    """A page scrolled down reloads itself after its refresh period and comes back scrolled
    to the same place."""
    harness = await served([rack(f"r{n}", *[B.PASS] * 8) for n in (1, 2, 3)])
    await harness.cycle()
    config = write_config(
        tmp_path / "rackwatch.toml", harness.lab, harness.urls, harness.state_file
    )
    settings = load_state_settings(config)
    app = pages_app(StateSource(settings.state_file), lambda: settings, refresh_s=1)
    server = TestServer(app)
    await server.start_server()
    try:
        await browser.resize(1400, 300)
        await browser.load(str(server.make_url("/")))
        assert await browser.evaluate("scrollTo(0, 200), scrollY") == 200
        reloaded = "performance.getEntriesByType('navigation')[0].type === 'reload'"
        await browser.poll(f"{reloaded} && document.readyState === 'complete'")
        assert await browser.poll("scrollY") == 200
    finally:
        await server.close()
