"""A headless Chromium driven as a user drives it: open a page, find an element by its text, click it
with the mouse, read the page. The Chrome DevTools Protocol over --remote-debugging-pipe (file
descriptors 3 and 4, messages ended by a NUL byte): the standard library only, no driver to install.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import time

# The centre of the first visible element of `selector` whose own text is `text`, scrolled into view.
_FIND = """(() => {
  const found = [...document.querySelectorAll(%s)].find(e => e.textContent.trim() === %s && e.getClientRects().length);
  if (!found) return null;
  found.scrollIntoView({block: "center"});
  const r = found.getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
})()"""


class Chromium:
    """A headless Chromium with one page, in the profile folder `profile` (a fresh folder: a fresh browser).

    Parameters
    ----------
    chromium : str
        The browser's executable.
    profile : str or Path
        Its user data folder; the same folder again is the same browser, remembering what it stored.
    width, height : int
        The window's size.
    """

    def __init__(self, chromium: str, profile, width: int = 1600, height: int = 1000) -> None:
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()
        # above 9, so that the shell's redirections to 3 and 4 never overwrite one of them
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--window-size={width},{height}", f"--user-data-dir={profile}", "--remote-debugging-pipe",
                "about:blank"]
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-', *args],
            pass_fds=ends, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        for fd in ends:
            os.close(fd)
        self._buffer, self._id = b"", 0
        page = next(t for t in self._call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self._call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self._call("Page.enable", self._session)

    def _message(self, deadline: float) -> dict | None:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                return None
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise EOFError(f"chromium ended (exit status {self.process.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _call(self, method: str, session: str | None = None, timeout: float = 60, **params):
        self._id += 1
        request = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while (answer := self._message(deadline)) is not None:
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
        raise TimeoutError(f"chromium did not answer {method} in {timeout} s")

    def open(self, url: str) -> None:
        """Go to `url`, as typed into the address bar."""
        self._call("Page.navigate", self._session, url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self._call("Runtime.evaluate", self._session, expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60):
        """The expression's value once it is truthy (the page's app renders asynchronously)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; the page shows: {self.text()[:2000]}")

    def click(self, text: str, selector: str = "*", timeout: float = 60) -> None:
        """Click, with the mouse, the element of `selector` whose text is `text`, once it shows."""
        x, y = self.wait_for(_FIND % (json.dumps(selector), json.dumps(text)), f"{selector} {text!r}", timeout)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self._call("Input.dispatchMouseEvent", self._session, type=kind, x=x, y=y, button="left", clickCount=1)

    def url(self) -> str:
        return self.evaluate("location.href")

    def text(self) -> str:
        """The page's visible text, its lines joined by " | "."""
        return " | ".join((self.evaluate("document.body ? document.body.innerText : ''") or "").split("\n"))

    def close(self) -> None:
        """Close the browser (its profile keeps what the pages stored)."""
        try:
            self._call("Browser.close", timeout=10)
            self.process.wait(timeout=30)
        except (OSError, EOFError, TimeoutError, RuntimeError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=30)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
