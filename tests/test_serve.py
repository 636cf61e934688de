"""`difformer serve` over real HTTP: a server process on a free loopback port, its outputs against offline
generate, 32 concurrent clients, every bad request, a client that goes away, and the trace."""
import random
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'difformer[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'difformer[serve]'")

from fixtures_serve import Server  # noqa: E402
from fixtures_train import WORDS  # noqa: E402

from difformer.generate import load  # noqa: E402


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    s = Server(trained_model, tmp_path_factory.mktemp("serve"), "--max-wait-ms", "30")
    yield s
    assert s.stop() == 143, s.log.read_text()  # SIGTERM: a graceful shutdown


@pytest.fixture(scope="module")
def pipe(trained_model):
    return load(trained_model, device="cpu", precision="fp32")


def healthy(server) -> bool:
    return server.request("GET", "/healthz")[0] == 200


def test_outputs_equal_offline_generate(server, pipe):
    inputs = ["red cat", "blue sun moon", "", "tree river stone fire wind", "cat"]
    for options in ({}, {"steps": 5, "seed": 3, "length_beam": 2, "noise_beam": 2, "sampler": "ddim"},
                    {"steps": 4, "min_t": 0.1}):
        status, body = server.post("/v1/generate", {"inputs": inputs, **options})
        assert status == 200, body
        assert body["outputs"] == pipe.generate(inputs, **options)
        cfg = pipe.decode_config(**options)
        assert body["report"]["setting"] == pipe.describe(cfg) and body["report"]["nfe"] == cfg.nfe
        assert body["report"]["precision"] == "fp32"
        assert body["timings"]["total_ms"] >= body["timings"]["decode_ms"] > 0


def test_32_concurrent_clients_get_their_own_outputs_batched_together(server, pipe):
    rng = random.Random(5)
    inputs = [" ".join(rng.choices(WORDS, k=rng.randint(1, 7))) for _ in range(32)]
    expected = pipe.generate(inputs, steps=8)

    def client(text):
        return server.post("/v1/generate", {"inputs": [text], "steps": 8})

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(client, inputs))
    assert all(status == 200 for status, _ in replies)
    assert [body["outputs"][0] for _, body in replies] == expected
    assert max(body["timings"]["batch_requests"] for _, body in replies) > 1


BAD = [  # (raw body or JSON, status, words of the error)
    (b'{"inputs": ["red cat"', 400, "malformed JSON"),
    (b"\xff\xfe", 400, "malformed JSON"),
    ([1, 2], 422, "JSON object"),
    ({"inputs": ["red"], "beams": 3}, 422, "unknown option 'beams'"),
    ({"input": ["red"]}, 422, ""),
    ({"inputs": "red cat"}, 422, "inputs"),
    ({"inputs": []}, 422, "empty"),
    ({"inputs": ["red"] * 65}, 413, "at most 64"),
    ({"inputs": ["red", "tree " * 100]}, 413, "input 1 has"),
    ({"inputs": ["red"], "steps": 0}, 422, "steps"),
    ({"inputs": ["red"], "steps": 5000}, 422, "steps"),
    ({"inputs": ["red"], "steps": "5"}, 422, "steps"),
    ({"inputs": ["red"], "clamp": 1}, 422, "clamp"),
    ({"inputs": ["red"], "seed": -1}, 422, "seed"),
    ({"inputs": ["red"], "min_t": 1.0}, 422, "min_t"),
    ({"inputs": ["red"], "min_t": "0.1"}, 422, "min_t"),
    ({"inputs": ["red"], "sampler": "euler"}, 422, "sampler"),
    ({"inputs": ["red"], "beam": 2}, 422, "do not apply"),
    ({"inputs": ["red"], "noise_beam": 100}, 422, "at most 64"),
    ({"inputs": ["red"], "selection": "ar"}, 422, "reranker"),
    (b"x" * (1 << 21), 413, "body over"),
]


@pytest.mark.parametrize("body,status,words", BAD, ids=[f"{i}-{s}" for i, (_, s, _) in enumerate(BAD)])
def test_a_bad_request_gets_its_status_and_one_error_and_the_server_goes_on(server, body, status, words):
    raw = body if isinstance(body, bytes) else None
    got, reply = server.request("POST", "/v1/generate", None if raw else body, raw=raw)
    assert got == status, reply
    assert list(reply) == ["error"] and words in reply["error"] and "\n" not in reply["error"]
    assert healthy(server)
    assert server.post("/v1/generate", {"inputs": ["red cat"]})[0] == 200


def test_a_trace_needs_an_input_and_the_server_goes_on(server):
    assert server.post("/v1/trace", {"input": "  "}) == (422, {"error": "input is empty"})
    assert server.post("/v1/trace", {"inputs": ["red"]})[0] == 422
    assert healthy(server)


def test_wrong_paths_methods_and_bodies_without_a_length_get_json_errors(server):
    assert server.request("GET", "/v1/nothing") == (404, {"error": "Not Found"})
    assert server.request("GET", "/v1/generate") == (405, {"error": "Method Not Allowed"})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 411") and b"Content-Length" in reply
    assert healthy(server)


def test_clients_that_disconnect_mid_request_do_not_stop_the_server(server, pipe):
    head = (b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # half a body, then gone
        sock.sendall(head + b'{"inputs": ["red')
    body = b'{"inputs": ["red cat blue", "sun"], "steps": 20}'
    whole = head.replace(b"500", str(len(body)).encode()) + body
    for _ in range(3):  # a whole request, gone before the answer
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(whole)
    status, reply = server.post("/v1/generate", {"inputs": ["red cat blue"]})
    assert status == 200 and reply["outputs"] == pipe.generate(["red cat blue"])
    assert healthy(server)


def test_the_trace_ends_with_the_generate_output(server, pipe):
    options = {"steps": 6, "seed": 2}
    status, trace = server.post("/v1/trace", {"input": "blue moon river", **options})
    assert status == 200, trace
    assert [s["step"] for s in trace["steps"]] == list(range(1, 7))
    assert [s["t"] for s in trace["steps"]] == pipe.schedule.timesteps_for(6)
    status, body = server.post("/v1/generate", {"inputs": ["blue moon river"], **options})
    assert trace["output"] == trace["steps"][-1]["text"] == body["outputs"][0]
    assert trace["timings"]["decode_ms"] > 0


def test_the_model_description_and_the_page(server, trained_model):
    status, info = server.request("GET", "/v1/model")
    assert status == 200
    assert info["arch"] == "difformer" and (info["source_lang"], info["target_lang"]) == ("src", "tgt")
    assert info["vocab_size"] == 300 and info["max_input_tokens"] == 31 and info["parameters"] > 0
    assert info["trained_on"]["splits"]["train"]["pairs"] == 2000
    assert info["server"]["batching"] is True and info["server"]["max_wait_ms"] == 30
    status, page = server.request("GET", "/")
    assert status == 200 and "/v1/trace" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


def test_an_autoregressive_model_is_served_too(trained_ar, tmp_path):
    s = Server(trained_ar, tmp_path, "--no-batching")
    try:
        inputs = ["red cat", "sun moon tree"]
        status, body = s.post("/v1/generate", {"inputs": inputs, "beam": 2})
        assert status == 200, body
        assert body["outputs"] == load(trained_ar, device="cpu", precision="fp32").generate(inputs, beam=2)
        assert body["report"]["beam"] == 2
        assert s.post("/v1/generate", {"inputs": inputs, "steps": 3})[0] == 422
        assert s.post("/v1/trace", {"input": "red cat"})[0] == 422
    finally:
        assert s.stop() == 143


def test_serve_refuses_a_missing_model_and_a_taken_port(trained_model, tmp_path):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "difformer.cli", "serve", *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    r = serve("--model", tmp_path / "nothing")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such model directory" in r.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        r = serve("--model", trained_model, "--port", taken.getsockname()[1], "--device", "cpu")
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr
