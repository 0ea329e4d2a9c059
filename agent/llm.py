"""The vision-language model provider: any OpenAI-compatible endpoint through LangChain's ChatOpenAI.

This module owns all model I/O, like geopy's ``geocoders/base.py``: bounded
concurrency, a rate limit, retries with backoff on 429 / 5xx / timeouts (honouring
``Retry-After``), an end-to-end deadline per attempt, a response cache, and the
mapping of every failure onto ``agent.errors``. The chain (``complete``) and the chat
session (``stream``) both call the endpoint through ``ModelClient``. Replies are read
through ``agent.replies`` (bounded size, checked shape). The API key never appears in
a message, a log line or a result.

Deadlines: each attempt, from connecting to the last byte, must finish within
``settings.timeout`` seconds (a streamed chat answer within ``STREAM_TIMEOUTS`` times
that), so a server that trickles a byte at a time is dropped. With the defaults (30 s,
3 retries) a silent server is given up after about two minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import random
import sqlite3
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_openai import ChatOpenAI

from .errors import (
    ConfigError,
    ModelAuthError,
    ModelError,
    ModelRateLimited,
    ModelResponseError,
    ModelTimeout,
    ModelUnavailable,
)
from .replies import LimitedTransport, httpx
from .settings import Settings

# HTTP statuses worth another attempt (the openai client's own list).
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 60.0
STREAM_TIMEOUTS = 4  # a streamed chat answer may take this many timeouts, end to end

log = logging.getLogger("geoagent")


@dataclass
class ModelReply:
    content: str
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


@dataclass
class Sampled:
    """The samples of one prompt and how many HTTP requests drawing them took (0: all cached)."""

    replies: list[ModelReply]
    requests: int


class ResponseCache:
    """Model replies keyed by (model, prompt hash, image hash, parameters), in one SQLite file.

    A repeated benchmark run, or a resumed one, costs no model calls.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")

    @staticmethod
    def key(model: str, messages: list[BaseMessage], params: dict) -> str:
        # Images are hashed on their own so that the key reads (model, prompt, image, params).
        texts, images = [], []
        for m in messages:
            parts = m.content if isinstance(m.content, list) else [{"type": "text", "text": m.content}]
            for part in parts:
                if part.get("type") == "image_url":
                    images.append(hashlib.sha256(part["image_url"]["url"].encode()).hexdigest())
                else:
                    texts.append(f"{m.type}:{part.get('text', '')}")
        prompt = hashlib.sha256("\n".join(texts).encode()).hexdigest()
        raw = json.dumps([model, prompt, images, params], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> ModelReply | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return ModelReply(**json.loads(row[0]), cached=True)

    def put(self, key: str, reply: ModelReply) -> None:
        data = json.dumps(
            {
                "content": reply.content,
                "refusal": reply.refusal,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
            }
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, data))


class RateLimiter:
    """At most ``rate`` request starts per second, shared by every client of one endpoint.

    Slots are reserved under a thread lock and waited for with ``asyncio.sleep``, so one
    limiter serves any number of event loops and threads.
    """

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    async def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


_limiters: dict[tuple[str, float], RateLimiter] = {}


def limiter_for(base_url: str, rate: float | None) -> RateLimiter | None:
    if rate is None:
        return None
    return _limiters.setdefault((base_url, rate), RateLimiter(rate))


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def map_error(exc: Exception, base_url: str, api_key: str | None, timeout: float | None = None) -> ModelError:
    """The openai client's exceptions as geoagent's, naming the endpoint and never the key."""
    where = base_url or "the OpenAI API"
    cause: BaseException | None = exc
    while cause is not None:  # raised by agent.replies under the client library
        if isinstance(cause, ModelError):
            return cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, openai.RateLimitError):
        retry_after = None
        header = exc.response.headers.get("retry-after") if exc.response is not None else None
        try:
            retry_after = float(header) if header is not None else None
        except ValueError:
            retry_after = None
        return ModelRateLimited(f"{where} rate-limited the request (HTTP 429) after retries", retry_after)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelAuthError(
            f"{where} refused the API key (HTTP {exc.status_code}): set OPENAI_API_KEY to a valid key"
        )
    if isinstance(exc, openai.APITimeoutError):
        return ModelTimeout(f"{where} did not answer within {timeout} s (timeout) after retries")
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailable(f"cannot connect to {where}: check --base-url and that the server runs")
    if isinstance(exc, openai.NotFoundError):
        return ModelResponseError(_scrub(f"{where} answered 404: check --model and --base-url ({exc.message})", api_key))
    if isinstance(exc, openai.APIStatusError):
        return ModelResponseError(_scrub(f"{where} answered HTTP {exc.status_code}: {exc.message}", api_key))
    return ModelResponseError(_scrub(f"{where} failed: {type(exc).__name__}: {exc}", api_key))


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext | bool:
    """The default TLS context of the openai client's HTTP library, built once per process.

    Building it loads the system CA bundle (~40 ms); every event loop gets its own HTTP
    client (see ``ModelClient.chat_model``), so without sharing it each ``GeoAgent.locate`` call
    paid that again. The same settings as the library's own default (``verify=True``),
    which is what is returned should the library offer no ``create_ssl_context``.
    """
    make = getattr(httpx, "create_ssl_context", None)
    return make() if make is not None else True


class ModelClient:
    """One chat model endpoint: ``await complete(messages, temperature=..., sample=...)``."""

    def __init__(self, settings: Settings, cache: ResponseCache | None = None):
        if not settings.model:
            raise ConfigError("no model configured: pass --model NAME (and --base-url for a local server)")
        self.settings = settings
        self.model = settings.model
        self.base_url = settings.base_url or ""
        self.cache = cache
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._limiter = limiter_for(self.base_url, settings.rate_limit)
        # Keyed by the loop object itself (weakly): a new loop may reuse a dead one's id().
        self._chats: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # What this endpoint turned out to accept (learnt from HTTP 400s, kept for the run).
        self.dropped: set[str] = set()
        self.max_tokens_name = "max_tokens"
        self.notices: list[str] = []

    def chat_model(self) -> ChatOpenAI:
        """A ChatOpenAI per event loop, each with its own async HTTP client.

        langchain-openai otherwise shares one cached client per endpoint across loops,
        and the second ``asyncio.run`` of a process fails with "Event loop is closed".
        """
        loop = asyncio.get_running_loop()
        chat = self._chats.get(loop)
        if chat is None:
            chat = self._chats[loop] = ChatOpenAI(
                model=self.settings.model,
                base_url=self.settings.base_url or None,
                # Local servers (vLLM, Ollama, llama.cpp) need no key; the client insists on one.
                api_key=self.settings.api_key or "not-needed",
                timeout=self.settings.timeout,
                max_retries=0,  # retried by ModelClient.attempts, each attempt under a deadline
                http_async_client=openai.DefaultAsyncHttpxClient(
                    timeout=self.settings.timeout,
                    transport=LimitedTransport(
                        httpx.AsyncHTTPTransport(
                            verify=_ssl_context(),
                            # The openai client's own pool limits (a custom transport brings its own).
                            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                        ),
                        self.where,
                    ),
                ),
            )
        return chat

    def _semaphore(self) -> asyncio.Semaphore:
        # One semaphore per event loop: asyncio primitives are bound to the loop they run in.
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = self._semaphores[loop] = asyncio.Semaphore(self.settings.concurrency)
        return sem

    async def complete(
        self,
        messages: list[BaseMessage],
        *,
        temperature: float,
        sample: int = 0,
        json_mode: bool = True,
    ) -> ModelReply:
        """One model call (cached). Raises a ``ModelError`` subclass when the endpoint fails."""
        drawn = await self.sample(messages, temperature=temperature, n=1, first=sample, json_mode=json_mode)
        return drawn.replies[0]

    async def sample(
        self,
        messages: list[BaseMessage],
        *,
        temperature: float,
        n: int,
        first: int = 0,
        json_mode: bool = True,
    ) -> Sampled:
        """Samples ``first`` .. ``first + n - 1`` of one prompt, drawn with ``n`` in one request.

        Each sample is cached on its own, so a later run that needs fewer, or the same,
        samples costs no call. When the endpoint returns fewer choices than asked (some
        ignore ``n``), the rest are requested separately; one that rejects ``n`` gets one
        request per sample from then on.
        """
        params: dict[str, Any] = {"temperature": temperature, "json": json_mode}
        if self.settings.max_tokens is not None:  # a cap can cut a reply short: part of the key
            params["max_tokens"] = self.settings.max_tokens
        keys = [
            ResponseCache.key(self.model, messages, {**params, "sample": i}) if self.cache else ""
            for i in range(first, first + n)
        ]
        replies: list[ModelReply | None] = [
            self.cache.get(key) if self.cache else None for key in keys
        ]
        requests = 0
        while (missing := [i for i, r in enumerate(replies) if r is None]):
            if requests >= n:  # a server that keeps answering with no choice at all
                raise ModelResponseError(f"{self.base_url or 'the OpenAI API'} returned no choices")
            ask = 1 if "n" in self.dropped else len(missing)
            got = await self._request(messages, temperature=temperature, n=ask, json_mode=json_mode)
            requests += 1
            for i, reply in zip(missing, got, strict=False):
                replies[i] = reply
                if self.cache and reply.refusal is None:
                    self.cache.put(keys[i], reply)
        return Sampled([r for r in replies if r is not None], requests)

    async def _request(
        self, messages: list[BaseMessage], *, temperature: float, n: int, json_mode: bool
    ) -> list[ModelReply]:
        """One HTTP request; its choices as replies (the request's prompt tokens on the first).

        A parameter the endpoint rejects with HTTP 400 (reasoning models refuse
        ``temperature`` and ``n``; newer OpenAI models want ``max_completion_tokens`` for
        ``max_tokens``) is dropped or renamed, and the request sent once more; the client
        remembers it and says so once.
        """
        for attempt in range(len(ADAPTABLE) + 1):
            body = self._body(temperature, n, json_mode)

            async def call(body: dict[str, Any] = body, last: bool = attempt == len(ADAPTABLE)) -> Any:
                try:
                    return await self.chat_model().agenerate([messages], extra_body=body)
                except openai.BadRequestError as exc:
                    # A 400 is not retried as it is; one naming a parameter is adapted below.
                    if last or rejected_param(exc, body) is None:
                        raise
                    return exc

            result = await self.attempts(call)
            if not isinstance(result, openai.BadRequestError):
                break
            self._adapt(rejected_param(result, body) or "")
        generations = result.generations[0]
        replies = [self._reply(g.message) for g in generations]  # type: ignore[attr-defined]
        if replies:
            # Every choice carries the request's usage: prompt tokens once, completion shared.
            usage = replies[0]
            share = usage.completion_tokens // len(replies)
            for i, reply in enumerate(replies):
                reply.prompt_tokens = usage.prompt_tokens if i == 0 else 0
                reply.completion_tokens = share
        return replies

    def _body(self, temperature: float, n: int, json_mode: bool) -> dict[str, Any]:
        """Sampling parameters in the request body, as this endpoint accepts them."""
        body: dict[str, Any] = {}
        if "temperature" not in self.dropped:
            body["temperature"] = temperature
        if n > 1 and "n" not in self.dropped:
            body["n"] = n
        if self.settings.max_tokens is not None:
            body[self.max_tokens_name] = self.settings.max_tokens
        if json_mode:
            # In extra_body: the same request body on the wire, but langchain-openai then
            # calls the SDK's create() rather than parse(), whose client-side request transform
            # walks the body once per member of a params union (twice): ~0.5-1 ms CPU per call.
            body["response_format"] = {"type": "json_object"}
        return body

    def _adapt(self, param: str) -> None:
        if param in ("max_tokens", "max_completion_tokens"):
            other = "max_completion_tokens" if param == "max_tokens" else "max_tokens"
            self.max_tokens_name = other
            note = f"{self.model} at {self.base_url or 'the OpenAI API'} wants {other!r} for {param!r}: sending that"
        else:
            self.dropped.add(param)
            note = (
                f"{self.model} at {self.base_url or 'the OpenAI API'} rejects {param!r}: "
                + ("drawing each sample in its own request" if param == "n" else f"sending requests without {param!r}")
            )
        if note not in self.notices:
            self.notices.append(note)
            log.warning(note)

    # -------------------------------------------------------------- attempts and deadlines

    @property
    def where(self) -> str:
        return self.base_url or "the OpenAI API"

    def _failure(self, exc: BaseException, deadline: float | None = None) -> tuple[ModelError, bool]:
        """The geoagent error for a failed attempt, and whether another attempt may succeed."""
        if isinstance(exc, TimeoutError):
            return ModelTimeout(
                f"{self.where} did not finish answering within {deadline or self.settings.timeout:g} s "
                f"(each of {self.settings.max_retries + 1} attempts)"
            ), True
        if isinstance(exc, openai.OpenAIError):
            error = map_error(exc, self.base_url, self.settings.api_key, self.settings.timeout)
            if isinstance(exc, openai.APIStatusError):
                no_retry = exc.response is not None and exc.response.headers.get("x-should-retry") == "false"
                return error, exc.status_code in RETRY_STATUSES and not no_retry
            return error, isinstance(error, ModelUnavailable)
        if isinstance(exc, ModelError):
            return exc, isinstance(exc, ModelUnavailable | ModelRateLimited)
        # Anything else the client library raised while reading the reply (KeyError,
        # TypeError, a JSON error in a stream...): the reply was unusable.
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return ModelResponseError(_scrub(f"{self.where} sent a reply that could not be read ({detail})", self.settings.api_key)), False

    def _backoff(self, attempt: int, error: ModelError) -> float:
        if isinstance(error, ModelRateLimited) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), MAX_RETRY_AFTER_S)
        return min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)

    async def attempts(self, call, timeout: float | None = None):
        """``await call()`` under the concurrency and rate limits, each attempt bounded end to
        end by ``timeout`` (default ``settings.timeout``), retried ``settings.max_retries`` times
        when the failure may pass. Raises a ``ModelError`` and nothing else."""
        deadline = timeout or self.settings.timeout
        error: ModelError | None = None
        for attempt in range(self.settings.max_retries + 1):
            if attempt and error is not None:
                await asyncio.sleep(self._backoff(attempt, error))
            async with self._semaphore():
                if self._limiter:
                    await self._limiter.wait()
                try:
                    async with asyncio.timeout(deadline):
                        return await call()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure becomes a ModelError
                    error, retry = self._failure(exc, deadline)
            if not retry:
                break
        assert error is not None
        raise error from None

    async def stream(
        self,
        messages: list[BaseMessage],
        *,
        tools: Sequence[Any] = (),
        tool_choice: str | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[AIMessageChunk]:
        """Stream one answer (the chat session's), through the same limits and error mapping as
        ``complete``. Raises a ``ModelError`` and nothing else; a stream that breaks after its
        first chunk is not retried (its text is already shown)."""
        t = self.settings.temperature if temperature is None else temperature
        chat = self.chat_model()
        model = chat.bind_tools(list(tools), tool_choice=tool_choice, temperature=t) if tools else chat.bind(temperature=t)
        deadline = self.settings.timeout * STREAM_TIMEOUTS
        loop = asyncio.get_running_loop()
        holder: dict[str, Any] = {}

        async def first() -> AIMessageChunk | None:
            # Connecting and the first chunk are one attempt, retried like ``complete``.
            holder["started"] = loop.time()
            holder["it"] = model.astream(messages).__aiter__()
            try:
                return await holder["it"].__anext__()
            except StopAsyncIteration:
                return None

        chunk = await self.attempts(first, deadline)
        end = holder["started"] + deadline
        it = holder["it"]
        try:
            while chunk is not None:
                yield chunk
                try:
                    async with asyncio.timeout_at(end):
                        chunk = await it.__anext__()
                except StopAsyncIteration:
                    chunk = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a broken stream is one ModelError
                    raise self._failure(exc, deadline)[0] from None
        finally:
            with contextlib.suppress(Exception):
                await it.aclose()

    @staticmethod
    def _reply(message: AIMessage) -> ModelReply:
        usage = message.usage_metadata or {}
        content = message.content
        if isinstance(content, list):  # content blocks
            content = "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
        return ModelReply(
            content=content or "",
            refusal=message.additional_kwargs.get("refusal"),
            prompt_tokens=int(usage.get("input_tokens", 0)),
            completion_tokens=int(usage.get("output_tokens", 0)),
        )


# Request parameters an endpoint may reject with HTTP 400, and that can be left out or renamed.
ADAPTABLE = ("temperature", "n", "max_tokens")


def rejected_param(exc: openai.BadRequestError, body: dict[str, Any]) -> str | None:
    """Which of the body's adaptable parameters a 400 names, from its ``param`` or its message."""
    sent = [p for p in (*ADAPTABLE, "max_completion_tokens") if p in body]
    named = getattr(exc, "param", None)
    if named in sent:
        return named
    message = str(getattr(exc, "message", "") or exc)
    return next((p for p in sent if f"'{p}'" in message or f'"{p}"' in message or f"`{p}`" in message), None)
