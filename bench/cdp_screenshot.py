"""Headless Chromium driven over the DevTools protocol: open a URL, click the
sidebar tab of the ipyparallel Clusters panel, screenshot.

Runs inside the client namespace (bench/jupyterlab_screenshot.py starts it
there). The URL, which carries the login token, is read from a private file
and sent over the protocol, so it is on no command line.
Usage: python -m bench.cdp_screenshot CHROMIUM URL_FILE OUT.png WIDTH,HEIGHT [--end]
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tornado.websocket import websocket_connect

PORT = 9333
PANEL_TAB = '.jp-SideBar [data-id="ipp-cluster-launcher"]'
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]  # fmt: skip


class Page:
    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params) -> dict:
        my_id = next(self.ids)
        await self.ws.write_message(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                raise RuntimeError("DevTools connection closed")
            msg = json.loads(raw)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def until(self, expression: str, what: str, timeout: float = 60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.25)
        raise TimeoutError(f"within {timeout:.0f} s: {what} did not happen")

    async def click(self, selector: str) -> None:
        rect = await self.until(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()",
            f"{selector} on the page",
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=rect["x"], y=rect["y"],
                button="left", clickCount=1,
            )  # fmt: skip


async def shoot(browser: str, url: str, out: Path, size: str, scroll_to_end: bool) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
         f"--remote-debugging-port={PORT}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        end = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json/list") as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > end:
                raise TimeoutError("Chromium's DevTools endpoint did not come up")
            await asyncio.sleep(0.2)
        ws = await websocket_connect(
            pages[0]["webSocketDebuggerUrl"], max_message_size=64 * 1024 * 1024
        )
        page = Page(ws)
        await page.call("Page.enable")
        width, height = (int(v) for v in size.split(","))
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        await page.call("Page.navigate", url=url)
        try:
            await page.until(
                "document.querySelectorAll('.jp-Notebook .jp-OutputArea-output').length > 2",
                "the notebook with its outputs rendered",
            )
        except TimeoutError:
            shot = await page.call("Page.captureScreenshot", format="png")
            out.with_suffix(".failed.png").write_bytes(base64.b64decode(shot["data"]))
            print(await page.js("document.location.href + ' ' + document.title"))
            raise
        await page.click(PANEL_TAB)
        await page.until(
            "!!document.querySelector('.ipp-ClusterListingItem')",
            "the Clusters panel listing a cluster",
        )
        if scroll_to_end:  # show the last results rather than the introduction
            await page.js(
                "(() => { const outs = document.querySelectorAll('.jp-Notebook .jp-OutputArea');"
                " outs[outs.length - 1].scrollIntoView({block: 'end'}); })()"
            )
        await asyncio.sleep(2)
        shot = await page.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    browser, url_file, out, size = sys.argv[1:5]
    end = "--end" in sys.argv[5:]
    asyncio.run(shoot(browser, Path(url_file).read_text().strip(), Path(out), size, end))
