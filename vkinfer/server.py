"""`vkinfer serve`: an OpenAI-compatible HTTP server on the slot engine.

One engine thread owns the device: it loads the model, admits queued requests into free slots
and advances every active one in shared steps (engine.Scheduler: continuous batching). The ASGI
side (FastAPI on uvicorn) checks each request, tokenizes it, and talks to the engine through a
bounded queue; tokens come back through an asyncio queue per request. A conversation sent again
with one more turn starts from the prefix-state cache and costs only its new tokens
(`usage.prompt_tokens_details.cached_tokens`).

Every request body is checked by a pydantic model; anything wrong is a 4xx with an OpenAI error
object {"error": {"message", "type", "param", "code"}}, never a traceback."""
import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections import deque
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import VkInferError

log = logging.getLogger("vkinfer.serve")
MAX_BODY = 1 << 20


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---- request bodies ----------------------------------------------------------------------------------
class Sampling(BaseModel):
    """Fields shared by both completion endpoints. Unknown fields are ignored (clients send many),
    except the ones below that would change the answer, which must keep their defaults."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, ge=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repeat_penalty: float = Field(1.0, gt=0, le=10)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    stream_options: dict | None = None
    n: int = 1
    logit_bias: dict | None = None
    ignore_eos: bool = False                  # vkinfer's (and llama-server's) extra, for benchmarks

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or ())
        if len(stops) > 16 or any(len(s) > 256 for s in stops):
            raise ValueError("at most 16 stop strings of up to 256 characters")
        return stops

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, v):
        if v is not None and not all(k == "include_usage" and isinstance(x, bool) for k, x in v.items()):
            raise ValueError("stream_options takes only include_usage (a bool)")
        return v

    def check(self):
        if self.n != 1:
            raise APIError(400, "only n = 1 is supported", "n", "unsupported_value")
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported", "logit_bias", "unsupported_value")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options needs stream = true", "stream_options")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list | None = None
    response_format: dict | None = None

    def check(self):
        super().check()
        if self.tools:
            raise APIError(400, "tools are not supported", "tools", "unsupported_value")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise APIError(400, "only the text response format is supported", "response_format",
                           "unsupported_value")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs = true", "top_logprobs")


class CompletionRequest(Sampling):
    prompt: str | list[int] | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check(self):
        super().check()
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise APIError(400, "one prompt per request (a list of strings is a batch)", "prompt")
        if self.echo or self.suffix or (self.best_of or 1) != 1:
            raise APIError(400, "echo, suffix and best_of are not supported", "echo", "unsupported_value")


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[int]


# ---- the engine thread -------------------------------------------------------------------------------
class Job:
    """One request in the engine: its prompt, settings, and the asyncio queue its events go to.
    Events: ("token", token_id, text, finish, logprobs) and ("error", status, message)."""

    def __init__(self, loop, prompt: list, settings: dict):
        self.loop, self.prompt, self.settings = loop, prompt, settings
        self.events = asyncio.Queue()
        self.cancelled = False
        self.cached_tokens = 0
        self.n_generated = 0

    def send(self, event: tuple):
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Engine:
    """Loads the model in its own thread, then runs requests in shared steps until stopped."""

    def __init__(self, load, queue_size: int):
        self._load = load
        self.queue_size = queue_size
        self.model = None
        self.error = None
        self.pending = deque()
        self.active = {}                      # id(Generation) -> (Generation, Job)
        self.lock = threading.Condition()
        self.stopping = False
        self.steps = 0
        self.thread = threading.Thread(target=self._run, name="vkinfer-engine", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout=30)

    def submit(self, job: Job):
        with self.lock:
            if len(self.pending) >= self.queue_size:
                raise APIError(503, f"the server is busy: {len(self.pending)} requests are waiting "
                                    f"for a slot; try again later", None, "queue_full", "server_error")
            self.pending.append(job)
            self.lock.notify()

    def wake(self):
        with self.lock:
            self.lock.notify()

    def slots(self) -> list:
        with self.lock:
            busy = {g.session.slot: (g, j) for g, j in self.active.values() if g.session._slot is not None}
        out = []
        for slot in range(self.model.n_seq if self.model else 0):
            g, job = busy.get(slot, (None, None))
            out.append({"id": slot, "state": "processing" if g else "idle",
                        "n_past": g.session.n_past if g else 0,
                        "n_prompt_tokens": len(g.prompt) if g else 0,
                        "n_generated": len(g.generated) if g else 0,
                        "cached_tokens": g.cached_tokens if g else 0})
        return out

    def _run(self):
        from .engine import Generation, Scheduler
        try:
            self.model = self._load()
        except BaseException as e:       # reported by /health and the command
            self.error = e
            return
        model = self.model
        sched = Scheduler(model)
        while True:
            with self.lock:
                while not self.stopping and not self.pending and not sched.busy and \
                        not any(j.cancelled for _, j in self.active.values()):
                    self.lock.wait(timeout=1.0)
                if self.stopping:
                    break
                admit = []
                while self.pending and model.free_slots > len(admit):
                    admit.append(self.pending.popleft())
            for job in admit:
                if job.cancelled:
                    continue
                session = model.session()
                try:
                    gen = Generation(model, session, job.prompt, whole=True, **job.settings)
                    sched.add(gen)
                except VkInferError as e:
                    session.close()
                    job.send(("error", 400, str(e)))
                    continue
                job.cached_tokens = gen.cached_tokens
                self.active[id(gen)] = (gen, job)
            for key, (gen, job) in list(self.active.items()):
                if job.cancelled:               # the client went away: free its slot now
                    sched.remove(gen)
                    self._finish(key)
            if not sched.busy:
                continue
            try:
                events = sched.step()
                self.steps += 1
            except Exception as e:              # a device or engine failure fails the requests in it
                log.exception("engine step failed")
                for key, (gen, job) in list(self.active.items()):
                    sched.remove(gen)
                    job.send(("error", 500, f"the engine failed: {e}"))
                    self._finish(key)
                continue
            for gen, token, text, finish in events:
                entry = self.active.get(id(gen))
                if entry is None:
                    continue
                job = entry[1]
                job.n_generated = len(gen.generated)
                job.send(("token", token, text, finish, gen.last_logprobs))
                if finish is not None:
                    self._finish(id(gen))
        for key in list(self.active):
            self._finish(key)

    def _finish(self, key):
        gen, _ = self.active.pop(key)
        gen.session.close()


# ---- the app -----------------------------------------------------------------------------------------
def create_app(engine: Engine, model_name: str, api_key: str | None = None, n_ctx_hint: int = 0):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="vkinfer", docs_url=None, redoc_url=None, openapi_url=None)

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        _log(request, e.status)
        return error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        _log(request, e.status_code)
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(APIError(e.status_code, str(e.detail), None, None, kind))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        _log(request, 400)
        return error(APIError(400, str(e), None, "invalid_value"))

    @app.exception_handler(Exception)
    async def _unexpected(request, e):
        log.exception("unexpected error")
        _log(request, 500)
        return error(APIError(500, f"internal error: {type(e).__name__}", None, None, "server_error"))

    def _log(request, status: int, n_in=None, n_out=None, cached=None):
        if getattr(request.state, "logged", False):
            return
        request.state.logged = True
        t0 = getattr(request.state, "t0", time.perf_counter())
        tokens = "" if n_in is None else f" tokens in {n_in} out {n_out} cached {cached}"
        log.info("%s %s %d%s %.3f s", request.method, request.url.path, status, tokens,
                 time.perf_counter() - t0)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        request.state.t0 = time.perf_counter()
        if request.url.path != "/health" and api_key is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                _log(request, 401)
                return error(APIError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                      None, "invalid_api_key", "authentication_error"))
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            _log(request, 400)
            return error(APIError(400, f"the request body is over {MAX_BODY} bytes", None, "body_too_large"))
        response = await call_next(request)
        if not getattr(request.state, "streaming", False):
            _log(request, response.status_code, *getattr(request.state, "tokens", (None, None, None)))
        return response

    async def body_of(request: Request, cls):
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise APIError(400, f"the request body is over {MAX_BODY} bytes", None, "body_too_large")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", None, "invalid_json")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param,
                           "invalid_value") from None

    def ready():
        if engine.error is not None:
            raise APIError(503, f"the model failed to load: {engine.error}", None, "load_failed", "server_error")
        if engine.model is None:
            raise APIError(503, "the model is loading", None, "loading", "server_error")
        return engine.model

    def check_model_name(name):
        if name and name not in (model_name, model_name + ".gguf"):
            raise APIError(400, f"unknown model '{name}'; this server serves '{model_name}'", "model",
                           "model_not_found")

    @app.get("/health")
    async def health():
        if engine.error is not None:
            return JSONResponse({"status": "error", "error": str(engine.error)}, status_code=503)
        if engine.model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        m = ready()
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "vkinfer", "meta": {"arch": m.arch,
                                                                            "n_ctx": m.n_ctx,
                                                                            "n_vocab": m.n_vocab}}]}

    @app.get("/slots")
    async def slots():
        m = ready()
        c = m.cache
        return {"slots": engine.slots(), "cache": {"entries": len(c.entries), "bytes": c.nbytes,
                                                   "budget_bytes": c.budget, "hits": c.hits,
                                                   "misses": c.misses},
                "queue": len(engine.pending), "steps": engine.steps}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        m = ready()
        req = await body_of(request, TokenizeRequest)
        ids = m.tokenizer.encode(req.content, add_bos=req.add_special, special=req.add_special)
        if req.with_pieces:
            return {"tokens": [{"id": i, "piece": m.tokenizer.decode([i])} for i in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        m = ready()
        req = await body_of(request, DetokenizeRequest)
        bad = [t for t in req.tokens if not 0 <= t < m.tokenizer.n_tokens]
        if bad:
            raise APIError(400, f"token {bad[0]} is outside the vocabulary (0..{m.tokenizer.n_tokens - 1})",
                           "tokens", "invalid_value")
        return {"content": m.tokenizer.decode(req.tokens)}

    def settings_of(req: Sampling, m, n_prompt: int, logprobs) -> dict:
        room = m.n_ctx - n_prompt
        if room < 1:
            raise APIError(400, f"the prompt has {n_prompt} tokens; the context of a slot is {m.n_ctx}",
                           "messages" if isinstance(req, ChatRequest) else "prompt", "context_length_exceeded")
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is not None and max_tokens > room:
            raise APIError(400, f"max_tokens {max_tokens} does not fit: the prompt has {n_prompt} of the "
                                f"context's {m.n_ctx} tokens", "max_tokens", "context_length_exceeded")
        return dict(max_tokens=max_tokens or room, temperature=req.temperature, top_p=req.top_p,
                    top_k=req.top_k, min_p=req.min_p, repeat_penalty=req.repeat_penalty,
                    presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                    seed=req.seed, stop=list(req.stop), logprobs=logprobs, ignore_eos=req.ignore_eos)

    async def run(request: Request, req: Sampling, prompt: list, settings: dict, chat: bool):
        m = engine.model
        job = Job(asyncio.get_running_loop(), prompt, settings)
        engine.submit(job)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        want_logprobs = settings["logprobs"] is not None
        tok = m.tokenizer

        def usage():
            return {"prompt_tokens": len(prompt), "completion_tokens": job.n_generated,
                    "total_tokens": len(prompt) + job.n_generated,
                    "prompt_tokens_details": {"cached_tokens": job.cached_tokens}}

        def logprob_entry(token, lp):
            piece = tok.decode([token])
            if chat:
                return {"token": piece, "logprob": lp[0], "bytes": list(piece.encode()),
                        "top_logprobs": [{"token": tok.decode([i]), "logprob": v,
                                          "bytes": list(tok.decode([i]).encode())} for i, v in lp[1]]}
            return piece, lp[0], {tok.decode([i]): v for i, v in lp[1]}

        async def events():
            while True:
                if not job.events.empty():
                    event = job.events.get_nowait()
                else:
                    try:
                        event = await asyncio.wait_for(job.events.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            job.cancelled = True
                            engine.wake()
                            return
                        continue
                if event[0] == "error":
                    raise APIError(event[1], event[2], None, None,
                                   "server_error" if event[1] >= 500 else "invalid_request_error")
                yield event[1:]
                if event[3] is not None:
                    return

        def choice(text, finish, entries, delta: bool):
            if chat:
                body = {"index": 0, ("delta" if delta else "message"):
                        ({"content": text} if delta else {"role": "assistant", "content": text}),
                        "finish_reason": finish}
                if want_logprobs:
                    body["logprobs"] = {"content": entries}
                return body
            body = {"index": 0, "text": text, "finish_reason": finish}
            if want_logprobs:
                body["logprobs"] = {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
                                    "top_logprobs": [e[2] for e in entries], "text_offset": None}
            return body

        def wrap(choices, **extra):
            return {"id": ident, "object": ("chat.completion" if chat else "text_completion")
                    + (".chunk" if req.stream and chat else ""), "created": created,
                    "model": model_name, "choices": choices, **extra}

        if not req.stream:
            text, finish, entries = "", None, []
            try:
                async for token, piece, finish, lp in events():
                    text += piece
                    if want_logprobs and lp is not None and not (finish == "stop" and not piece
                                                                 and token in m.tokenizer.eog_ids):
                        entries.append(logprob_entry(token, lp))
            finally:
                job.cancelled = job.cancelled or finish is None
                engine.wake()
            if finish is None:                       # the client left
                raise APIError(400, "the client disconnected", None, "client_disconnected")
            request.state.tokens = (len(prompt), job.n_generated, job.cached_tokens)
            return wrap([choice(text, finish, entries, False)], usage=usage())

        include_usage = bool((req.stream_options or {}).get("include_usage"))
        request.state.streaming = True

        async def sse():
            finish, status = None, 200
            try:
                if chat:
                    yield _sse(wrap([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "finish_reason": None}]))
                async for token, piece, finish, lp in events():
                    entries = [logprob_entry(token, lp)] if want_logprobs and lp is not None and \
                        not (finish == "stop" and token in m.tokenizer.eog_ids) else []
                    if piece or entries or finish:
                        yield _sse(wrap([choice(piece, finish, entries, True)]))
                if include_usage:
                    yield _sse(wrap([], usage=usage()))
                yield "data: [DONE]\n\n"
            except APIError as e:
                status = e.status
                yield _sse(e.body())
                yield "data: [DONE]\n\n"
            finally:
                if finish is None:
                    job.cancelled = True
                    engine.wake()
                _log(request, status, len(prompt), job.n_generated, job.cached_tokens)

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def completion_request(request: Request, cls):
        m = ready()
        req = await body_of(request, cls)
        req.check()
        check_model_name(req.model)
        return m, req

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        m, req = await completion_request(request, ChatRequest)
        messages = [{"role": "system" if x.role == "developer" else x.role, "content": x.text()}
                    for x in req.messages]
        try:
            prompt, plain = m.render_chat(messages)
        except VkInferError as e:
            raise APIError(400, str(e), "messages") from None
        if plain:
            from .chat import FALLBACK_STOP_STRINGS
            req.stop = list(req.stop) + list(FALLBACK_STOP_STRINGS)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        return await run(request, req, prompt, settings_of(req, m, len(prompt), logprobs), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        m, req = await completion_request(request, CompletionRequest)
        if isinstance(req.prompt, str) or (req.prompt and isinstance(req.prompt[0], str)):
            text = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
            prompt = m.tokenizer.encode(text)
        else:
            prompt = list(req.prompt)
            bad = [t for t in prompt if not 0 <= t < m.n_vocab]
            if bad:
                raise APIError(400, f"token {bad[0]} is outside the vocabulary (0..{m.n_vocab - 1})",
                               "prompt", "invalid_value")
        if not prompt:
            raise APIError(400, "the prompt is empty", "prompt", "invalid_value")
        return await run(request, req, prompt, settings_of(req, m, len(prompt), req.logprobs), chat=False)

    return app


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def serve(args) -> int:
    """The command: loads the model in the engine thread while uvicorn starts answering."""
    import uvicorn
    from pathlib import Path
    from .cli import open_model, resolve_model
    path = resolve_model(args.model)
    name = Path(path).stem
    queue_size = args.queue if args.queue is not None else 4 * args.parallel
    if queue_size < 0 or args.parallel < 1 or not 0 < args.port < 65536:
        raise VkInferError("--queue must be >= 0, --parallel >= 1 and --port within 1..65535")
    args.model = path
    args.quiet = True
    engine = Engine(lambda: open_model(args), queue_size)
    app = create_app(engine, name, args.api_key)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s vkinfer serve: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    def watch():                      # a failed load ends the server with its message
        engine.thread.join()
        if engine.error is not None:
            server.should_exit = True

    engine.start()
    threading.Thread(target=watch, daemon=True).start()
    log.info("serving %s on http://%s:%d (%d slots of %d tokens, queue %d)", name, args.host, args.port,
             args.parallel, args.ctx, queue_size)
    server.run()
    engine.stop()
    if engine.error is not None:
        e = engine.error
        raise e if isinstance(e, VkInferError) else VkInferError(f"loading failed: {e}")
    return 0
