"""The HTML leaderboard in a real browser: headless Chromium (Debian's `chromium` package) opens
the page that `quantkit leaderboard --format html --out .../results/leaderboard.html` writes, with
no console error, no uncaught exception and no failed load; a header click sorts the table (as
the page's own script does it, read back from the DOM); a figure's record opens on click; a
full-page screenshot is kept under the test's tmp dir and its path printed.

Chromium is driven over the DevTools protocol with aiohttp's websocket client (aiohttp is a core
dependency; no playwright or selenium). Without Chromium the test is skipped, saying how to
install it.
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
import time
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from test_report_golden import build  # noqa: E402  (the golden files' store: every kind of cell)

INSTALL = "apt-get install -y --no-install-recommends chromium  (as root, Debian/Ubuntu)"


def _chromium() -> str:
    for name in (os.environ.get("QUANTKIT_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return str(shutil.which(name))
    pytest.skip(f"no Chromium on PATH (chromium, chromium-browser, google-chrome or $QUANTKIT_CHROMIUM); {INSTALL}")


class DevTools:
    """The few DevTools protocol calls the test needs, on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.pending: dict[int, asyncio.Future] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, timeout: float = 30, **params) -> dict:
        i = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        answer = await asyncio.wait_for(fut, timeout)
        assert "error" not in answer, (method, answer["error"])
        return answer.get("result", {})

    async def evaluate(self, expression: str):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    async def wait_event(self, method: str, timeout: float = 30) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events:
                if e.get("method") == method:
                    return e
            await asyncio.sleep(0.05)
        raise TimeoutError(method)

    def problems(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                            for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']} ({p['entry'].get('source')}): {p['entry']['text']}")
        return out


def _start(chromium: str, profile: Path) -> tuple[subprocess.Popen, int]:
    args = [chromium, "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--hide-scrollbars", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    log = open(profile.parent / "chromium.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    port_file = profile / "DevToolsActivePort"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"chromium exited ({proc.returncode}): {(profile.parent / 'chromium.log').read_text()[-2000:]}")
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        time.sleep(0.1)
    proc.kill()
    pytest.fail("chromium did not open its DevTools port within 60 s")


async def _drive(port: int, url: str, shot: Path) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            dt = DevTools(ws)
            for domain in ("Runtime", "Log", "Page"):
                await dt.call(f"{domain}.enable")
            await dt.call("Page.navigate", url=url)
            await dt.wait_event("Page.loadEventFired")
            await asyncio.sleep(0.5)  # late errors (scripts run on load) still count
            out: dict = {"title": await dt.evaluate("document.title")}
            rows = "Array.from(document.querySelectorAll('#board-0 tbody tr')).map(r => r.cells[0].textContent)"
            col = "Array.from(document.querySelectorAll('#board-0 thead th')).findIndex(h => h.textContent === 'KLD mean')"
            out["col"] = await dt.evaluate(col)
            out["before"] = await dt.evaluate(rows)
            click = f"document.querySelectorAll('#board-0 thead th')[{out['col']}].click()"
            await dt.evaluate(click)
            out["ascending"] = await dt.evaluate(rows)
            out["aria"] = await dt.evaluate(f"document.querySelectorAll('#board-0 thead th')[{out['col']}]"
                                            ".getAttribute('aria-sort')")
            await dt.evaluate(click)
            out["descending"] = await dt.evaluate(rows)
            out["points"] = await dt.evaluate("document.querySelectorAll('svg .qk-point title').length")
            out["svg_width"] = await dt.evaluate("document.querySelector('figure.plot svg').getBoundingClientRect().width")
            await dt.evaluate("document.querySelector('#board-0 td.fig.floor').click()")
            out["panel"] = await dt.evaluate("[document.getElementById('inspect').hidden, "
                                             "document.querySelector('#inspect pre').textContent]")
            height = await dt.evaluate("document.documentElement.scrollHeight")
            await dt.call("Emulation.setDeviceMetricsOverride", width=1400, height=min(int(height), 8000),
                          deviceScaleFactor=1, mobile=False)
            png = await dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            shot.write_bytes(base64.b64decode(png["data"]))
            out["problems"] = dt.problems()
            dt.reader.cancel()
            return out


def test_the_html_leaderboard_opens_sorts_and_is_screenshot_in_headless_chromium(tmp_path, capsys):
    from quantkit.cli import app

    chromium = _chromium()
    store = build(tmp_path / "golden.sqlite")
    page = tmp_path / "results" / "leaderboard.html"
    done = CliRunner().invoke(app, ["leaderboard", "--format", "html", "--out", str(page), "--db", str(store.path)])
    assert done.exit_code == 0, done.output

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc, port = _start(chromium, profile)
    shot = tmp_path / "leaderboard.png"
    try:
        out = asyncio.run(asyncio.wait_for(_drive(port, page.as_uri(), shot), 120))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    with capsys.disabled():
        print(f"\nHTML leaderboard screenshot: {shot}  (page: {page})")

    assert out["problems"] == []  # no console error or warning, no exception, no failed load
    assert out["title"] == "quantkit leaderboard"
    # KLD mean ascending: the reference stays first, missing values (nf4) last
    kld = {"awq": 0.02, "f16": 0.0100, "int8": 0.00002, "q2x": 0.4, "q4": 0.060, "q5": 0.061, "q8": 0.0104}
    by_value = sorted(kld, key=kld.get)
    assert out["before"] == ["reference", "awq", "f16", "int8", "nf4", "q2x", "q4", "q5", "q8"]  # the report's order
    assert out["ascending"] == ["reference"] + by_value + ["nf4"]
    assert out["aria"] == "ascending"
    assert out["descending"] == ["reference"] + by_value[::-1] + ["nf4"]
    assert out["points"] == 11 and out["svg_width"] > 100
    hidden, record = out["panel"]
    assert not hidden and '"kld_mean"' in record and '"hardware": "test cpu (4 cores)"' in record
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
