"""A headless Chromium driven through the DevTools protocol, for tests that type into a page.

Chromium is started with ``--remote-debugging-pipe``: protocol messages (JSON, each ended by a
NUL byte) go in on its file descriptor 3 and come out on 4, so no port is opened and no
WebSocket library is needed. Keystrokes are sent with ``Input.dispatchKeyEvent``, the way the
keyboard reaches a page: the focused field changes and its ``input`` listeners run.

    with Browser(tmp_path / "profile") as browser:
        page = browser.open(path)
        page.focus("#gene-query")
        page.type("esr2")
        page.text("#gene-answer")
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

#: Seconds to wait for one answer of the browser before giving up (a hung browser, not a
#: measure of speed: tests assert nothing about time).
ANSWER_WAIT = 120

# keys that are not characters: DevTools key name -> Windows virtual key code
_SPECIAL = {"Backspace": 8, "Enter": 13, "Delete": 46}


def available() -> bool:
    return shutil.which("chromium") is not None


class Browser:
    def __init__(self, profile: Path):
        to_read, self._to = os.pipe()       # we write, Chromium reads on fd 3
        self._from, from_write = os.pipe()  # Chromium writes on fd 4, we read

        def descriptors():  # in the child, before exec: put the two ends where Chromium looks
            os.dup2(to_read, 3)
            os.dup2(from_write, 4)

        self._proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=descriptors,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_read)
        os.close(from_write)
        self._buffer = b""
        self._id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (an error answer raises RuntimeError)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        answer = self.wait(lambda m: m.get("id") == self._id)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def wait(self, wanted) -> dict:
        """The next message for which ``wanted(message)`` is true (others are dropped)."""
        deadline = time.monotonic() + ANSWER_WAIT
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if wanted(message):
                    return message
            ready, _, _ = select.select([self._from], [], [], max(0.0, deadline -
                                                                  time.monotonic()))
            if not ready:
                raise TimeoutError(f"Chromium did not answer within {ANSWER_WAIT} s")
            chunk = os.read(self._from, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk

    def open(self, path: Path, query: str = "") -> "Page":
        """Load a local file in the browser's page and wait for its load event."""
        target = next(t for t in self.send("Target.getTargets")["targetInfos"]
                      if t["type"] == "page")
        session = self.send("Target.attachToTarget",
                            {"targetId": target["targetId"], "flatten": True})["sessionId"]
        self.send("Page.enable", session=session)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri() + query},
                  session=session)
        self.wait(lambda m: m.get("method") == "Page.loadEventFired")
        return Page(self, session)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(timeout=ANSWER_WAIT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to, self._from):
            try:
                os.close(fd)
            except OSError:
                pass


class Page:
    def __init__(self, browser: Browser, session: str):
        self._browser, self._session = browser, session

    def evaluate(self, expression: str):
        result = self._browser.send("Runtime.evaluate",
                                    {"expression": expression, "returnByValue": True},
                                    session=self._session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def focus(self, selector: str) -> None:
        assert self.evaluate(f"(function (e) {{ e.focus(); return document.activeElement === e; }})"
                             f"(document.querySelector({json.dumps(selector)}))")

    def text(self, selector: str) -> str:
        return self.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")

    def value(self, selector: str) -> str:
        return self.evaluate(f"document.querySelector({json.dumps(selector)}).value")

    def press(self, key: str) -> None:
        """One key down and up: a character, or one of Backspace, Enter, Delete."""
        if key in _SPECIAL:
            code = {"key": key, "code": key, "windowsVirtualKeyCode": _SPECIAL[key]}
            down = dict(code, type="rawKeyDown")
        else:
            code = {"key": key}
            down = dict(code, type="keyDown", text=key)
        self._browser.send("Input.dispatchKeyEvent", down, session=self._session)
        self._browser.send("Input.dispatchKeyEvent", dict(code, type="keyUp"),
                           session=self._session)

    def type(self, text: str) -> None:
        for char in text:
            self.press(char)
