"""The serving batcher (no HTTP): which queued requests are decoded together, and every result reaching its
own request."""
import threading

from difformer.config import DecodeConfig
from difformer.serve.batcher import Batcher, Job


class Recorder:
    """A fake decode: each output names its source; the batches are recorded. Blocks while `hold` is clear."""

    def __init__(self):
        self.batches: list[list[list[int]]] = []
        self.hold, self.entered = threading.Event(), threading.Event()

    def __call__(self, sources, cfg):
        self.entered.set()
        self.hold.wait(10)
        self.batches.append(sources)
        if any(s == [666] for s in sources):
            raise ValueError("bad source")
        return [f"{cfg.seed}:{s}" for s in sources]


def submit(batcher, sources, cfg, results):
    done = threading.Event()

    def finish(result, timings):
        results.append((sources, result, timings))
        done.set()

    batcher.submit(Job(done=finish, sources=sources, cfg=cfg, tokens=sum(len(s) + 1 for s in sources)))
    return done


def test_queued_requests_with_the_same_options_are_decoded_together_within_the_budget():
    decode = Recorder()
    batcher = Batcher(decode, max_batch_tokens=8, max_wait_ms=50)
    a, b = DecodeConfig(seed=1), DecodeConfig(seed=2)
    results = []
    waits = [submit(batcher, [[1]], a, results)]  # taken alone; the worker then waits in decode
    assert decode.entered.wait(10)
    waits += [submit(batcher, [[2], [3]], a, results), submit(batcher, [[4]], b, results),
              submit(batcher, [[5, 5]], a, results), submit(batcher, [[6, 6, 6]], a, results)]
    decode.hold.set()
    assert all(w.wait(10) for w in waits)
    batcher.stop()
    # [[1]] alone; then the oldest waiting (a: 2 tokens x2) takes the a-jobs that fit 8 tokens: [[5, 5]]
    # (3) joins (7 <= 8), [[6, 6, 6]] (4) does not; the b job and the rest follow in arrival order
    assert decode.batches == [[[1]], [[2], [3], [5, 5]], [[4]], [[6, 6, 6]]]
    for sources, outputs, timings in results:
        seed = 2 if sources == [[4]] else 1
        assert outputs == [f"{seed}:{s}" for s in sources]
        assert timings["batch_inputs"] == {1: 1, 2: 3, 4: 1, 5: 3, 6: 1}[sources[0][0]]


def test_without_batching_each_request_is_decoded_alone():
    decode = Recorder()
    batcher = Batcher(decode, max_batch_tokens=1000, max_wait_ms=50, batching=False)
    results = []
    waits = [submit(batcher, [[i]], DecodeConfig(), results) for i in range(4)]
    decode.hold.set()
    assert all(w.wait(10) for w in waits)
    batcher.stop()
    assert decode.batches == [[[0]], [[1]], [[2]], [[3]]]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_is_decoded():
    decode = Recorder()
    decode.hold.set()
    batcher = Batcher(decode, max_batch_tokens=1000, max_wait_ms=0)
    results = []
    assert submit(batcher, [[666]], DecodeConfig(), results).wait(10)
    assert submit(batcher, [[7]], DecodeConfig(), results).wait(10)
    batcher.stop()
    assert isinstance(results[0][1], ValueError) and results[1][1] == ["0:[7]"]


def test_a_call_runs_alone_and_returns_its_value():
    decode = Recorder()
    decode.hold.set()
    batcher = Batcher(decode, max_batch_tokens=1000, max_wait_ms=20)
    got = []
    done = threading.Event()
    batcher.submit(Job(done=lambda r, t: (got.append(r), done.set()), call=lambda: "traced"))
    assert done.wait(10)
    batcher.stop()
    assert got == ["traced"] and decode.batches == []
