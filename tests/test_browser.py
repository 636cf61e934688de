"""The page of `difformer serve` in a real browser: headless Chromium, driven over the DevTools protocol,
types a German sentence, waits for the denoising steps to render, checks the last row against the API and
saves a screenshot. `make test-browser` installs Debian's chromium when missing and runs this file.

DIFFORMER_SERVE_MODEL=DIR serves that model instead of the tiny test model, and DIFFORMER_SCREENSHOT=PATH
also writes the screenshot there (how docs/serve.png is made: see the README).
"""
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: `make test-browser` "
                                "installs Debian's chromium package and runs this test")
pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'difformer[serve]'")
ws_client = pytest.importorskip("websockets.sync.client", reason="websockets (dev extra) drives the browser")

from fixtures_serve import Server  # noqa: E402

from difformer.generate import load  # noqa: E402

# the tiny test model (32 positions, a 300-subword vocabulary of English words) takes a short one
SENTENCE = "Ein kleiner Hund läuft über eine grüne Wiese." if os.environ.get("DIFFORMER_SERVE_MODEL") else "Ein Hund."


class DevTools:
    """The few Chrome DevTools Protocol calls the test needs, over the page's websocket."""

    def __init__(self, ws):
        self.ws, self.id = ws, 0

    def call(self, method: str, **params) -> dict:
        self.id += 1
        self.ws.send(json.dumps({"id": self.id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.id:
                assert "error" not in message, message
                return message["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.eval(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)
        return value

    def click(self, selector: str) -> None:
        box = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                        ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "profile"
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                             "--window-size=1100,1150", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        page = next(t for t in targets if t["type"] == "page")
        with ws_client.connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_page_shows_the_sentence_being_denoised(browser, trained_model, tmp_path):
    model = Path(os.environ.get("DIFFORMER_SERVE_MODEL") or trained_model)
    server = Server(model, tmp_path)
    try:
        browser.call("Page.navigate", url=server.url + "/")
        browser.wait_for("document.readyState === 'complete' && "
                         "document.getElementById('model')?.textContent.startsWith('loading') === false")
        steps = int(browser.eval("document.getElementById('steps').value"))
        limit = server.request("GET", "/v1/model")[1]["max_input_tokens"]
        assert len(load(model).tokenizer.encode([SENTENCE])[0]) <= limit  # else the page shows a 413
        browser.eval("document.getElementById('input').focus()")
        browser.call("Input.insertText", text=SENTENCE)  # typed, as a user would
        browser.click("#go")
        browser.wait_for("document.getElementById('final').dataset.done === '1'")
        final = browser.eval("document.getElementById('final').textContent")
        rows = browser.eval("[...document.querySelectorAll('#steps-table tr.step')].map(r => r.dataset.text)")
        status, body = server.post("/v1/generate", {"inputs": [SENTENCE], "steps": steps, "seed": 0,
                                                    "length_beam": 1, "noise_beam": 1})
        assert status == 200
        assert len(rows) == steps and rows[-1] == final == body["outputs"][0]
        assert "decoded in" in browser.eval("document.getElementById('timing').textContent")
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
        (tmp_path / "serve.png").write_bytes(shot)
        if os.environ.get("DIFFORMER_SCREENSHOT"):
            Path(os.environ["DIFFORMER_SCREENSHOT"]).write_bytes(shot)
    finally:
        assert server.stop() == 143
