"""Dynamic batching: requests queue, and one worker thread decodes them together.

The worker takes the oldest request, then every queued request with the same decoding options, up to a
budget of source tokens x candidates, waiting at most `max_wait_ms` after the oldest arrived (while the
worker is busy, requests gather anyway). Requests with other options wait for a later batch, in order. A
source's output does not depend on its batch (its noise is keyed on its own tokens, sampling.py), so a
batched request gets what offline `generate` gives. Work that cannot be batched (a trace) runs alone.
The model is only ever used from the worker thread.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from difformer.config import DecodeConfig

# done(result or exception, timings): called on the worker thread
Done = Callable[[object, dict], None]


@dataclass
class Job:
    done: Done
    sources: list[list[int]] = field(default_factory=list)
    cfg: DecodeConfig | None = None  # None: `call` runs alone
    call: Callable[[], object] | None = None
    tokens: int = 0  # what the job takes of a batch's budget: source tokens x candidates
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """`decode(sources, cfg) -> outputs` run on one thread over batches of queued jobs.

    batching=False decodes one request at a time (the baseline of bench/serve.py).
    """

    def __init__(self, decode: Callable[[list[list[int]], DecodeConfig], list[str]], max_batch_tokens: int,
                 max_wait_ms: float, batching: bool = True):
        self.decode, self.max_batch_tokens = decode, max_batch_tokens
        self.max_wait, self.batching = max_wait_ms / 1000, batching
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="difformer-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                raise RuntimeError("the server is shutting down")
            self.queue.append(job)
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join()
        while self.queue:
            self.queue.popleft().done(RuntimeError("the server is shutting down"), {})

    def _next_batch(self) -> list[Job] | None:
        """The oldest job and the queued jobs it can be decoded with; None when stopping."""
        with self.cond:
            while not self.queue and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return None
            first = self.queue.popleft()
            batch, budget = [first], self.max_batch_tokens - first.tokens
            if first.cfg is None or not self.batching:
                return batch
            deadline = first.queued + self.max_wait
            while True:
                for job in list(self.queue):
                    if job.cfg == first.cfg and job.tokens <= budget:
                        self.queue.remove(job)
                        batch.append(job)
                        budget -= job.tokens
                left = deadline - time.perf_counter()
                if budget <= 0 or left <= 0 or self.stopping:
                    return batch
                self.cond.wait(left)  # woken by a new job, or at the deadline for a last look

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            start = time.perf_counter()
            try:
                if batch[0].cfg is None:
                    results = [batch[0].call()]
                else:
                    outputs = self.decode([s for job in batch for s in job.sources], batch[0].cfg)
                    results, at = [], 0
                    for job in batch:
                        results.append(outputs[at:at + len(job.sources)])
                        at += len(job.sources)
            except Exception as e:  # the requests fail; the server goes on
                results = [e] * len(batch)
            end = time.perf_counter()
            timings = {"decode_ms": round((end - start) * 1000, 1), "batch_requests": len(batch),
                       "batch_inputs": sum(len(j.sources) for j in batch)}
            for job, result in zip(batch, results):
                try:
                    job.done(result, {"queue_ms": round((start - job.queued) * 1000, 1), **timings})
                except RuntimeError:  # the event loop waiting for it has closed (shutdown)
                    pass
