"""The HTTP API of `difformer serve` (FastAPI): generate with dynamic batching, trace the denoising steps,
describe the model, and the page at / that shows a sentence being denoised.

Every error is one JSON object {"error": "..."} with its status: 400 malformed JSON, 411 a body without a
Content-Length, 413 too many inputs, an input over the model's length or a body over the size limit, 422
unknown or out-of-range options (404/405 for a wrong path or method).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from difformer.config import DecodeConfig
from difformer.errors import DifformerError
from difformer.generate import Pipeline
from difformer.hub import DATASET
from difformer.serve.batcher import Batcher, Job


class Options(BaseModel):
    """The decoding options a request may set; unset ones come from the model's config. Strict types: "5"
    is not a number and 1 is not a boolean."""
    model_config = ConfigDict(extra="forbid", strict=True)
    steps: int | None = None
    min_t: float | None = None
    early_stop: int | None = None
    length_beam: int | None = None
    noise_beam: int | None = None
    sampler: str | None = None
    clamp: bool | None = None
    cond_enhance: bool | None = None
    selection: str | None = None
    seed: int | None = None
    beam: int | None = None
    lenpen: float | None = None
    max_len_a: float | None = None
    max_len_b: int | None = None

    def options(self) -> dict:
        return self.model_dump(exclude_none=True, exclude={"inputs", "input"})


class GenerateRequest(Options):
    inputs: list[str]


class TraceRequest(Options):
    input: str


class ServeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass
class Limits:
    max_inputs: int = 64  # inputs per request
    max_candidates: int = 64  # length_beam x noise_beam, or beam: what one input may cost
    max_body_bytes: int = 1 << 20


def make_app(pipe: Pipeline, max_batch_tokens: int = 8192, max_wait_ms: float = 10.0, batching: bool = True,
             limits: Limits = Limits()) -> FastAPI:
    """The application serving `pipe`; its batcher thread runs while the app does (lifespan)."""
    state: dict = {}
    max_len = pipe.config.model.max_positions - 1  # EOS takes the last position

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["batcher"] = Batcher(pipe.decode_ids, max_batch_tokens, max_wait_ms, batching)
        yield
        state["batcher"].stop()

    app = FastAPI(title="difformer", lifespan=lifespan)
    page = files("difformer.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    info = model_info(pipe, limits, max_batch_tokens, max_wait_ms, batching)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        status, message = explain(e.errors())
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        """Bodies are read whole, so their size is checked first; a body without a length is refused."""
        size = request.headers.get("content-length")
        if size is None:
            if request.method in ("POST", "PUT", "PATCH"):
                return JSONResponse({"error": "a request body needs a Content-Length"}, status_code=411)
        elif not size.isdigit() or int(size) > limits.max_body_bytes:
            return JSONResponse({"error": f"request body over {limits.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    def candidates(cfg: DecodeConfig) -> int:
        """Rows decoded per input: the beam, or length x noise beams."""
        return cfg.beam if pipe.arch == "transformer" else cfg.length_beam * cfg.noise_beam

    def decode_config(options: dict) -> DecodeConfig:
        try:
            cfg = pipe.decode_config(**options)
        except DifformerError as e:
            raise ServeError(422, str(e)) from None
        if candidates(cfg) > limits.max_candidates:
            raise ServeError(422, f"{candidates(cfg)} candidates per input; this server allows at most "
                                  f"{limits.max_candidates}")
        return cfg

    def encode(texts: list[str]) -> list[list[int]]:
        sources = pipe.tokenize(texts)
        for i, s in enumerate(sources):
            if len(s) > max_len:
                raise ServeError(413, f"input {i} has {len(s)} tokens; this model takes at most {max_len}")
        return sources

    async def run(**job) -> tuple[object, dict]:
        """Queue a job for the batcher thread and wait for its result without blocking the event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result: object, timings: dict) -> None:
            if not future.done():  # the client may have gone
                future.set_result((result, timings))

        try:
            state["batcher"].submit(Job(done=lambda *a: loop.call_soon_threadsafe(settle, *a), **job))
        except RuntimeError as e:
            raise ServeError(503, str(e)) from None
        result, timings = await future
        if isinstance(result, DifformerError):
            raise ServeError(422, str(result))
        if isinstance(result, BaseException):
            raise ServeError(500, f"decoding failed: {type(result).__name__}: {result}")
        return result, timings

    def report(cfg: DecodeConfig) -> dict:
        out = {"model": pipe.arch, "setting": pipe.describe(cfg), "precision": pipe.precision,
               "device": str(pipe.device)}
        if pipe.arch == "difformer":
            out.update(steps=cfg.early_stop or cfg.steps, candidates=candidates(cfg),
                       selection=cfg.selection, nfe=cfg.nfe)
        else:
            out.update(beam=cfg.beam)
        return out

    @app.post("/v1/generate")
    async def generate(request: GenerateRequest) -> dict:
        start = time.perf_counter()
        if len(request.inputs) > limits.max_inputs:
            raise ServeError(413, f"{len(request.inputs)} inputs; this server takes at most {limits.max_inputs} "
                                  "per request")
        if not request.inputs:
            raise ServeError(422, "inputs is empty; give at least one string")
        cfg = decode_config(request.options())
        sources = encode(request.inputs)
        tokens = sum(len(s) + 1 for s in sources) * candidates(cfg)
        outputs, timings = await run(sources=sources, cfg=cfg, tokens=tokens)
        timings["total_ms"] = round((time.perf_counter() - start) * 1000, 1)
        return {"outputs": outputs, "report": report(cfg), "timings": timings}

    @app.post("/v1/trace")
    async def trace(request: TraceRequest) -> dict:
        start = time.perf_counter()
        if pipe.arch != "difformer":
            raise ServeError(422, "a trace shows a Difformer's denoising steps; this model is autoregressive")
        options = request.options()
        decode_config({**options, "length_beam": 1, "noise_beam": 1})
        if not encode([request.input])[0]:
            raise ServeError(422, "input is empty")
        result, timings = await run(call=lambda: pipe.trace(request.input, **options))
        timings["total_ms"] = round((time.perf_counter() - start) * 1000, 1)
        return {**result, "timings": timings}

    @app.get("/v1/model")
    async def model() -> dict:
        return info

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "queued": len(state["batcher"].queue)}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    return app


def explain(errors: list[dict]) -> tuple[int, str]:
    """One status and one line for pydantic's list of what is wrong with a request body."""
    e = errors[0]
    where = ".".join(str(x) for x in e["loc"][1:])  # without the leading "body"
    if e["type"] == "json_invalid":
        return 400, f"malformed JSON: {e.get('ctx', {}).get('error', e['msg'])}"
    if not where:
        return 422, "the request body must be a JSON object"
    if e["type"] == "extra_forbidden":
        known = ", ".join(sorted(Options.model_fields))
        return 422, f"unknown option '{where}'; known: {known}"
    if e["type"] == "missing":
        return 422, f"'{where}' is required"
    return 422, f"{where}: {e['msg']}"


def model_info(pipe: Pipeline, limits: Limits, max_batch_tokens: int, max_wait_ms: float, batching: bool) -> dict:
    """What GET /v1/model says: the model, its data and languages, its decoding defaults, this server."""
    directory = pipe.tokenizer.path.parent
    dataset = {}
    if (directory / DATASET).is_file():
        dataset = json.loads((directory / DATASET).read_text(encoding="utf-8"))
    return {"model": str(directory), "arch": pipe.arch,
            "parameters": sum(p.numel() for p in pipe.model.parameters()),
            "vocab_size": pipe.tokenizer.vocab_size, "max_input_tokens": pipe.config.model.max_positions - 1,
            "source_lang": dataset.get("source_lang"), "target_lang": dataset.get("target_lang"),
            "trained_on": {"data": pipe.config.train.data,
                           "splits": {k: {n: v.get(n) for n in ("source_file", "target_file", "pairs")}
                                      for k, v in dataset.get("splits", {}).items()}},
            "reranker": str(pipe.reranker.tokenizer.path.parent) if pipe.reranker else None,
            "device": str(pipe.device), "precision": pipe.precision,
            "decoding_defaults": dataclasses.asdict(pipe.config.decode), "config": pipe.config.to_dict(),
            "server": {"batching": batching, "max_batch_tokens": max_batch_tokens, "max_wait_ms": max_wait_ms,
                       **dataclasses.asdict(limits)}}
