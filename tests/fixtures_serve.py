"""A `difformer serve` process on a free loopback port, for the API and browser tests."""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path


class Server:
    def __init__(self, model: Path, log_dir: Path, *args: str):
        self.log = log_dir / "server.log"
        self.out = log_dir / "server.out"
        with open(self.out, "w") as out, open(self.log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "difformer.cli", "serve", "--model", str(model),
                                          "--port", "0", "--device", "cpu", "--precision", "fp32", *args],
                                         stdout=out, stderr=err)
        deadline = time.monotonic() + 120
        while "serving" not in self.out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.url = self.out.read_text().split(" at ")[1].split()[0].rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None,
                timeout: float = 120) -> tuple[int, dict | str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        kind = response.getheader("content-type", "")
        return response.status, json.loads(text) if kind.startswith("application/json") else text

    def post(self, path: str, body: object) -> tuple[int, dict]:
        return self.request("POST", path, body)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
