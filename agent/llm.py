"""The vision-language model provider: any OpenAI-compatible endpoint through LangChain's ChatOpenAI.

This module owns all model I/O, like geopy's ``geocoders/base.py``: bounded
concurrency, retries with backoff on 429 / 5xx / timeouts (the ``openai``
client's own, which honours ``Retry-After``), a response cache, and the mapping
of transport errors onto ``rag_store.errors``. The API key never appears in a
message, a log line or a result.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import sqlite3
import ssl
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from langchain_core.messages import AIMessage, BaseMessage
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
from .settings import Settings


@dataclass
class ModelReply:
    content: str
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


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
    library = sys.modules.get(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])
    make = getattr(library, "create_ssl_context", None)
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
                max_retries=self.settings.max_retries,
                http_async_client=openai.DefaultAsyncHttpxClient(
                    timeout=self.settings.timeout, verify=_ssl_context()
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
        params: dict[str, Any] = {"temperature": temperature, "sample": sample, "json": json_mode}
        key = ResponseCache.key(self.model, messages, params) if self.cache else ""
        if self.cache and (hit := self.cache.get(key)) is not None:
            return hit
        kwargs: dict[str, Any] = {"temperature": temperature}
        if json_mode:
            # Sent in extra_body: the same request body on the wire, but langchain-openai then
            # calls the SDK's create() rather than parse(), whose client-side request transform
            # walks the body once per member of a params union (twice): ~0.5-1 ms CPU per call.
            kwargs["extra_body"] = {"response_format": {"type": "json_object"}}
        async with self._semaphore():
            if self._limiter:
                await self._limiter.wait()
            try:
                message = await self.chat_model().ainvoke(messages, **kwargs)
            except openai.OpenAIError as exc:
                raise map_error(exc, self.base_url, self.settings.api_key, self.settings.timeout) from None
        reply = self._reply(message)
        if self.cache and reply.refusal is None:
            self.cache.put(key, reply)
        return reply

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
