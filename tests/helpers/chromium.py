"""A page opened in a real headless Chromium, driven over the DevTools protocol, for the report's
browser test (#26): every URL the page asked for, every console message and log entry, its DOM
and a PNG of it.

Why the protocol and not a recording proxy: Chromium itself talks to Google (network time,
account lookups, a spelling dictionary) whatever flags it is given, so a proxy cannot tell the
browser's traffic from the page's. Network.requestWillBeSent on the page's own session names only
what the page loads.

Chromium missing: the test is skipped, except under CI (`CI` set, as .ci/run's host sets it),
which installs it, where its absence fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP = "chromium is not installed (apt-get install chromium)"
FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
         "--remote-debugging-port=0", "--remote-allow-origins=*"]


def require_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{SKIP}; CI installs it (.ci/run), so here its absence is an error",
                        pytrace=False)
        pytest.skip(SKIP)
    return CHROMIUM


@dataclass
class Page:
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    dom: str = ""
    png: bytes = b""
    probe: Any = None  # what the probe expression evaluated to


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, page: Page) -> None:
        self.ws, self.page = ws, page
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.loaded = asyncio.Event()

    async def read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.waiting:
                self.waiting.pop(data["id"]).set_result(data)
            else:
                self.event(data.get("method", ""), data.get("params", {}))

    def event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.page.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.page.console.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            self.page.console.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.page.console.append(f"{entry['level']} ({entry['source']}): {entry['text']}")
        elif method == "Page.loadEventFired":
            self.loaded.set()

    async def call(self, method: str, session: str | None = None, **params: Any
                   ) -> dict[str, Any]:
        self.next_id += 1
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = reply
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        data = await asyncio.wait_for(reply, 30)
        if "error" in data:
            raise RuntimeError(f"{method}: {data['error']}")
        result: dict[str, Any] = data["result"]
        return result


@contextlib.asynccontextmanager
async def _browser(width: int, height: int) -> AsyncIterator[str]:
    """A headless Chromium with a profile of its own; yields its DevTools websocket URL."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="batchrun-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            binary, *FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}",
            "about:blank", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield await _devtools_url(Path(profile) / "DevToolsActivePort", proc)
        finally:
            if proc.returncode is None:
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)


async def _devtools_url(port_file: Path, proc: asyncio.subprocess.Process) -> str:
    """Chromium writes its port and path to the file once it listens: poll for it."""
    for _ in range(1500):
        lines = port_file.read_text().split() if port_file.exists() else []  # noqa: ASYNC240
        if len(lines) == 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        assert proc.returncode is None, f"chromium exited with {proc.returncode}"
        await asyncio.sleep(0.02)
    raise AssertionError("chromium did not open its DevTools port in 30 s")


async def open_page(path: Path, width: int = 1400, height: int = 1000, scale: float = 0.25,
                    media: str = "screen", probe: str = "null") -> Page:
    """Load path (absolute), wait for its load event, and take its DOM and a PNG of the whole
    page at `scale` of its size (a quarter by default: enough to see it is drawn, and small
    enough to decode in pure Python in a second), as the `media` ("screen", "print") shows it.
    `probe`, a JavaScript expression, is evaluated in the loaded page."""
    page = Page()
    async with _browser(width, height) as url, aiohttp.ClientSession() as http, \
            http.ws_connect(url, max_msg_size=0) as ws:
        cdp = _Session(ws, page)
        reader = asyncio.create_task(cdp.read())
        try:
            target = await cdp.call("Target.createTarget", url="about:blank")
            sid = (await cdp.call("Target.attachToTarget", targetId=target["targetId"],
                                  flatten=True))["sessionId"]
            for domain in ("Network", "Runtime", "Log", "Page"):
                await cdp.call(f"{domain}.enable", sid)
            await cdp.call("Emulation.setEmulatedMedia", sid, media=media)
            await cdp.call("Page.navigate", sid, url=path.as_uri())
            await asyncio.wait_for(cdp.loaded.wait(), 30)
            dom = await cdp.call("Runtime.evaluate", sid, returnByValue=True,
                                 expression="document.documentElement.outerHTML")
            page.dom = dom["result"]["value"]
            page.probe = (await cdp.call("Runtime.evaluate", sid, expression=probe,
                                         returnByValue=True))["result"].get("value")
            size = (await cdp.call("Page.getLayoutMetrics", sid))["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                    "scale": scale}
            shot = await cdp.call("Page.captureScreenshot", sid, format="png", clip=clip,
                                  captureBeyondViewport=True)
            page.png = base64.b64decode(shot["data"])
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return page
