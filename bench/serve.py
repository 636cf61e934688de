"""`difformer serve` under load on this machine: requests/s and p50/p95 latency for 1, 8 and 32 concurrent
clients, each request one Multi30k test2016 sentence (default decoding of the model), with and without
dynamic batching, in one run. Every reply is checked against offline `generate` of the same sentence.

    python bench/serve.py                     # the 120-minute distilled Multi30k Difformer (bench/teacher.py)
    python bench/serve.py --model DIR --requests 300

The server runs in its own process (all cores); the clients are threads of this one, sending requests
back to back. Writes results/serve.json and .md. Nothing else may run beside it.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, commit, machine, save_results  # noqa: E402

from difformer.generate import load  # noqa: E402

HERE = Path(__file__).parent
MODES = {"dynamic batching": [], "one request at a time": ["--no-batching"]}


def start_server(model: Path, log: Path, *args: str) -> tuple[subprocess.Popen, int]:
    out = log.with_suffix(".out")
    with open(out, "w") as o, open(log, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "difformer.cli", "serve", "--model", str(model), "--port", "0",
                                 "--device", "cpu", "--precision", "fp32", *args], stdout=o, stderr=e)
    while "serving" not in out.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"the server did not start: {log.read_text()}")
        time.sleep(0.1)
    return proc, int(out.read_text().split(" at ")[1].split()[0].rstrip("/").rsplit(":", 1)[1])


def post(port: int, text: str) -> tuple[float, str]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/generate", json.dumps({"inputs": [text]}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}: {body}")
    return time.perf_counter() - start, body["outputs"][0]


def load_test(port: int, sentences: list[str], expected: dict[str, str], clients: int, requests: int) -> dict:
    texts = [sentences[i % len(sentences)] for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(lambda t: post(port, t), texts))
    wall = time.perf_counter() - start
    latency = sorted(r[0] * 1000 for r in replies)
    return {"clients": clients, "requests": requests, "requests_per_second": round(requests / wall, 1),
            "p50_ms": round(statistics.median(latency), 1),
            "p95_ms": round(latency[min(len(latency) - 1, int(0.95 * len(latency)))], 1),
            "same_as_offline": sum(out == expected[t] for t, (_, out) in zip(texts, replies))}


def markdown(r: dict) -> str:
    lines = ["# `difformer serve` under load (`python bench/serve.py`)", "",
             f"Model `{r['model']}`, {r['setting']}, {r['precision']}; each request is one Multi30k test2016 "
             "sentence; clients send requests back to back. *same as offline*: replies equal to offline "
             "`generate` of the same sentence.", "",
             "| server | clients | requests | requests/s | p50 ms | p95 ms | same as offline |",
             "|---|---|---|---|---|---|---|"]
    for mode, rows in r["modes"].items():
        for row in rows:
            lines.append(f"| {mode} | {row['clients']} | {row['requests']} | {row['requests_per_second']} | "
                         f"{row['p50_ms']} | {row['p95_ms']} | {row['same_as_offline']}/{row['requests']} |")
    lines += ["", f"`{r['command']}` (commit {r['commit']}; {r['machine']}); server options "
              f"`--max-wait-ms {r['max_wait_ms']}`, the rest default."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=HERE / "work/teacher/runs/difformer-distilled-120min/model")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/multi30k")
    p.add_argument("--requests", type=int, default=192, help="requests per concurrency level")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    args = p.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model}: no model there; `python bench/teacher.py --long 120` trains it, or pass "
                         "--model")
    sentences = (args.data / "test.de").read_text(encoding="utf-8").splitlines()[:args.requests]
    pipe = load(args.model, device="cpu", precision="fp32")
    expected = dict(zip(sentences, pipe.generate(sentences)))  # batch-independent: the same one by one
    results = {"model": str(args.model), "setting": pipe.describe(pipe.decode_config()), "precision": "fp32",
               "max_wait_ms": args.max_wait_ms, "machine": machine(), "commit": commit(), "command": command(),
               "modes": {}}
    del pipe
    with tempfile.TemporaryDirectory() as tmp:
        for mode, flags in MODES.items():
            proc, port = start_server(args.model, Path(tmp) / "server.log", "--max-wait-ms", str(args.max_wait_ms),
                                      *flags)
            try:
                load_test(port, sentences, expected, 4, 16)  # warm-up
                rows = results["modes"][mode] = []
                for clients in args.clients:
                    rows.append(load_test(port, sentences, expected, clients, max(args.requests, 4 * clients)))
                    print(f"{mode}, {clients} clients: {rows[-1]}", flush=True)
            finally:
                proc.terminate()
                proc.wait(60)
    save_results("serve", results, markdown(results))


if __name__ == "__main__":
    main()
