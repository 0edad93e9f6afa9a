"""Headless Chromium for tests, driven over the DevTools protocol on a pipe, with the standard library only.

Why this and not selenium or playwright: `--remote-debugging-pipe` gives the full DevTools protocol
(console messages, every network request, screenshots, real mouse events) on two file descriptors,
so nothing listens on a port, nothing is downloaded (no driver binary, no browser bundle), and the
only system package is Debian's `chromium`. Messages are JSON, each ended by a NUL byte; the
browser reads commands on its fd 3 and writes replies and events on its fd 4.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """$REDBLUE_CHROMIUM, else chromium or chromium-browser on PATH."""
    for candidate in (os.environ.get("REDBLUE_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


class DevToolsError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page; `events` collects every protocol event of the page."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        self.executable, self.width, self.height, self.timeout = executable, width, height, timeout
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    # --- process and pipe -------------------------------------------------------------------------

    def __enter__(self) -> Chromium:
        to_browser_read, to_browser_write = os.pipe()
        from_browser_read, from_browser_write = os.pipe()
        # move the browser's ends above fd 10 so dup2 onto 3 and 4 in the child cannot clobber them
        child_in = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_read)
        os.close(from_browser_write)

        def wire_pipes() -> None:  # in the child, before exec
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.profile = tempfile.mkdtemp(prefix="redblue-chromium-")
        args = [self.executable, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}", "about:blank"]
        self.stderr_path = Path(self.profile) / "stderr.log"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=wire_pipes, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=stderr)
        os.close(child_in)
        os.close(child_out)
        self._write, self._read = to_browser_write, from_browser_read
        targets = self.call("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call("Browser.close", session=False)
        except (DevToolsError, OSError, EOFError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise DevToolsError(f"no reply from Chromium in {self.timeout:g} s; its stderr: {self.stderr_path.read_text()[-2000:]}")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise EOFError(f"Chromium closed the pipe; its stderr: {self.stderr_path.read_text()[-2000:]}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True) -> dict[str, Any]:
        """Send one command and return its result, keeping the events that arrive meanwhile."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append((reply["method"], reply.get("params", {})))

    def wait_for_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        seen = len(self.events)
        while True:
            for name, params in self.events[seen:]:
                if name == method:
                    return params
            seen = len(self.events)
            reply = self._receive(deadline)
            if "method" in reply:
                self.events.append((reply["method"], reply.get("params", {})))

    # --- what the tests use -----------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (the page's script has run by then)."""
        self.events.clear()
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise DevToolsError(f"cannot open {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (a blocked fetch or a CSP violation shows here)."""
        found = []
        for name, params in self.events:
            if name == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif name == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif name == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def requests(self) -> list[str]:
        """The URL of every request the page made."""
        return [params["request"]["url"] for name, params in self.events if name == "Network.requestWillBeSent"]

    def rect(self, selector: str) -> dict[str, float]:
        """The element's box in page coordinates (scrolled into view first, so mouse events can reach it)."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.left, y: r.top, width: r.width, height: r.height, scrollX: window.scrollX, scrollY: window.scrollY}; })()"
        )
        if box is None:
            raise DevToolsError(f"no element {selector}")
        return box

    def screenshot(self, box: dict[str, float]) -> bytes:
        """A PNG of one region, given in viewport coordinates as `rect` returns it."""
        clip = {"x": box["x"] + box["scrollX"], "y": box["y"] + box["scrollY"], "width": box["width"], "height": box["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})["data"]
        return base64.b64decode(data)

    def mouse(self, kind: str, x: float, y: float) -> None:
        params: dict[str, Any] = {"type": kind, "x": x, "y": y}
        if kind in ("mousePressed", "mouseReleased"):
            params.update(button="left", clickCount=1)
        self.call("Input.dispatchMouseEvent", params)

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)
