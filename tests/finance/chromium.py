"""Open a page in Debian's headless Chromium over the DevTools protocol (aiohttp's websocket client):
collect console errors and uncaught exceptions, count what rendered, take a screenshot."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

#: Counted once the page has loaded: plotly charts, and the SVG roots plotly draws into.
COUNT_JS = """new Promise(done => requestAnimationFrame(() => done(JSON.stringify({
  plots: document.querySelectorAll('.js-plotly-plot').length,
  rendered: [...document.querySelectorAll('.js-plotly-plot')].filter(p => p._fullLayout).length,
  svgs: document.querySelectorAll('.js-plotly-plot svg.main-svg').length,
  traces: document.querySelectorAll('.js-plotly-plot g.trace').length}))))"""


@dataclass
class Rendered:
    counts: dict[str, int]
    errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is missing: apt-get install -y chromium (make setup installs it)"
    return found


async def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    """Chromium writes its DevTools port into the profile once it listens."""
    port_file = profile / "DevToolsActivePort"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (port_file.exists() and port_file.read_text().strip()):
        assert proc.poll() is None, f"chromium exited with {proc.returncode}"
        assert loop.time() < deadline, "chromium did not open its DevTools port"
        await asyncio.sleep(0.05)
    return int(port_file.read_text().split()[0])


async def render(page: Path, out_dir: Path, timeout_s: float = 60) -> Rendered:
    """Load ``page`` in a fresh headless Chromium; its console errors, counts and a screenshot."""
    profile = out_dir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous run's port
    proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                             "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # no network
                             f"--user-data-dir={profile}", "--window-size=1280,2400", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = await _devtools_port(profile, proc)
        async with aiohttp.ClientSession() as http:
            targets = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                return await asyncio.wait_for(_drive(ws, page, out_dir), timeout_s)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _drive(ws: aiohttp.ClientWebSocketResponse, page: Path, out_dir: Path) -> Rendered:
    ids = itertools.count(1)
    errors: list[str] = []
    loaded = False

    async def call(method: str, **params: Any) -> dict[str, Any]:
        nonlocal loaded
        my_id = next(ids)
        await ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = json.loads((await ws.receive()).data)
            if msg.get("id") == my_id:
                assert "error" not in msg, msg
                return msg.get("result", {})
            note(msg)

    def note(msg: dict[str, Any]) -> None:
        nonlocal loaded
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("exception", {}).get("description", str(params)))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(params["entry"]["text"])
        elif method == "Page.loadEventFired":
            loaded = True

    for domain in ("Runtime", "Log", "Page"):
        await call(f"{domain}.enable")
    await call("Page.navigate", url=page.resolve().as_uri())
    while not loaded:
        note(json.loads((await ws.receive()).data))
    result = await call("Runtime.evaluate", expression=COUNT_JS, awaitPromise=True, returnByValue=True)
    counts = json.loads(result["result"]["value"])
    shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    path = out_dir / "finance-report.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return Rendered(counts, errors, path)
