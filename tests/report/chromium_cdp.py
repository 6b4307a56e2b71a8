"""Headless Chromium for the report tests: install check and a tiny DevTools-protocol client.

The client talks to Chromium over ``--remote-debugging-pipe`` (file descriptors 3 and 4,
NUL-separated JSON messages), so no websocket package and no browser download are needed: the
browser is Debian's ``chromium`` package.

:func:`ensure_chromium` returns the executable, installing the package with ``apt-get`` when it
is missing and we are root; it returns ``(None, reason)`` when that is impossible.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
]


def ensure_chromium(timeout_s: float = 900.0) -> tuple[str | None, str]:
    """Path of a usable Chromium, installing Debian's package when needed.

    Returns
    -------
    (path, "") or (None, reason)
    """
    for cand in (CHROMIUM, shutil.which("chromium") or ""):
        if cand and os.access(cand, os.X_OK):
            return cand, ""
    if os.geteuid() != 0:
        return None, "chromium is not installed and the tests are not running as root"
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and apt-get is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = Path(tempfile.gettempdir()) / "hitit-chromium-install.lock"
    # pytest-xdist workers may get here together: one installs, the others wait on the lock
    import fcntl

    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if os.access(CHROMIUM, os.X_OK):
                return CHROMIUM, ""
            for cmd in (["apt-get", "update"],
                        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
                res = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True,
                                     timeout=timeout_s)
                if res.returncode != 0:
                    tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
                    return None, f"`{' '.join(cmd)}` failed: {' | '.join(tail)}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"installing chromium failed: {exc}"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM, ""
    return None, "apt-get install chromium finished but /usr/bin/chromium is missing"


class CDPError(RuntimeError):
    """A DevTools command failed or timed out."""


class Browser:
    """One headless Chromium driven over the DevTools pipe.

    Usage::

        with Browser(exe) as b:
            page = b.open(Path("page.html"))
            page.evaluate("document.title")
    """

    def __init__(self, exe: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="hitit-chromium-")
        to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, from_chrome_w = os.pipe()
        src = (to_chrome_r, from_chrome_w)

        def _fds() -> None:  # child: fd 3 = commands in, fd 4 = replies out
            a, b = os.dup(src[0]), os.dup(src[1])
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.stderr_path = Path(self._profile) / "stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=_fds, pass_fds=(3, 4, *src), close_fds=True,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    # ---------------------------------------------------------------- protocol
    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome_w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError("timed out waiting for chromium")
            ready, _, _ = select.select([self._from_chrome_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_chrome_r, 1 << 20)
            if not chunk:
                raise CDPError(f"chromium closed the pipe; stderr: {self.stderr_tail()}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout_s: float = 30.0) -> dict:
        """Send one command and return its result (events seen meanwhile go to ``events``)."""
        mid = self._send(method, params, session)
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._read_message(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, session: str | None = None, timeout_s: float = 30.0) -> dict:
        """Wait for an event (or return one already received)."""
        for ev in self.events:
            if ev["method"] == method and (session is None or ev.get("sessionId") == session):
                self.events.remove(ev)
                return ev
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._read_message(deadline)
            if "method" in msg:
                if msg["method"] == method and (session is None or msg.get("sessionId") == session):
                    return msg
                self.events.append(msg)

    def stderr_tail(self, n: int = 20) -> str:
        self._stderr.flush()
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ---------------------------------------------------------------- pages
    def open(self, path: Path, *, width: int = 1280, height: int = 900) -> Page:
        """Open ``path`` (file) in a new tab and wait for its load event."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, sid)
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=sid)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=sid)
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=sid)
        self.wait_event("Page.loadEventFired", session=sid, timeout_s=60)
        page.evaluate("new Promise(r => setTimeout(r, 50))", await_promise=True)
        return page

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - best effort
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_chrome_w, self._from_chrome_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One attached tab."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.b = browser
        self.session = session

    def evaluate(self, expression: str, *, await_promise: bool = False):
        res = self.b.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": await_promise},
                          session=self.session)
        if "exceptionDetails" in res:
            raise CDPError(f"JS exception in {expression!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (CDP Input events) at the centre of the first matching element."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.b.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                     "button": "left", "clickCount": 1},
                        session=self.session)

    def type_text(self, selector: str, text: str) -> None:
        """Focus an input and type ``text`` (CDP Input.insertText fires the input event)."""
        self.click(selector)
        self.b.call("Input.insertText", {"text": text}, session=self.session)

    def select(self, selector: str, value: str) -> None:
        """Choose an option of a <select> as a user would (value set, change event fired)."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      f" e.value = {json.dumps(value)};"
                      " e.dispatchEvent(new Event('change', {bubbles: true})); })()")

    def screenshot(self) -> bytes:
        data = self.b.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False},
                           session=self.session)["data"]
        return base64.b64decode(data)

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries of this tab so far."""
        self.evaluate("1")  # flush pending events into the buffer
        out = []
        for ev in self.b.events:
            if ev.get("sessionId") != self.session:
                continue
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                   for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
        return out

    def requested_urls(self) -> list[str]:
        """Every URL the tab requested (data: URLs included)."""
        return [ev["params"]["request"]["url"] for ev in self.b.events
                if ev.get("sessionId") == self.session and ev["method"] == "Network.requestWillBeSent"]
