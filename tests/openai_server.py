"""A real OpenAI-compatible HTTP server with scripted replies, for tests.

The hosted vision-language model is outside the product, so tests replace it with this
server: it listens on 127.0.0.1 (a free port), speaks the Chat Completions wire protocol
(plain JSON and ``text/event-stream`` streaming) and answers from a script::

    with OpenAIServer(replies=[Reply("Paris"), Reply(tool_calls=[...])]) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test")
        ...
        assert srv.requests[0]["model"] == "some-model"

Which reply answers a request: the next queued reply (``replies=`` and :meth:`push`),
else ``responder(request_body)``, else ``default``. With none of them the server answers
500 ``script_exhausted`` (with ``x-should-retry: false`` so clients fail at once).

Only the standard library is used. Every connection gets its own daemon thread and no
lock is held while a reply waits out its delay, so concurrent clients see ideal latency.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "OpenAIServer",
    "Received",
    "Reply",
    "Responder",
    "image_urls",
    "last_user_text",
]

_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", None),
}

_VALID_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _error_body(status: int, message: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``."""
    err_type, default_code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {
        "error": {
            "message": message or f"Scripted error {status}: {phrase}",
            "type": err_type,
            "param": None,
            "code": code or default_code,
        }
    }


def _unsupported(param: str) -> dict:
    """HTTP 400 body of a parameter the model does not support, worded like OpenAI's."""
    if param == "max_tokens":
        message = (
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead."
        )
    elif param == "temperature":
        message = "Unsupported value: 'temperature' does not support this value with this model. Only the default (1) value is supported."
    else:
        message = f"Unsupported parameter: '{param}' is not supported with this model."
    body = _error_body(400, message, "unsupported_parameter")
    body["error"]["param"] = param
    return body


def _estimate_tokens(text: str) -> int:
    """Roughly four characters per token, like the tokenizer rule of thumb."""
    return math.ceil(len(text) / 4) if text else 0


@dataclass
class Reply:
    """One scripted answer of the model.

    ``content``/``refusal``/``tool_calls`` make up the assistant message. Each tool call is
    ``{"name": str, "arguments": dict | str, "id": str (optional)}``; dict arguments are
    sent as a JSON string, as the API does. A ``status`` other than 200 answers with
    ``error_body`` (default: the OpenAI error shape for that status) and ``headers``
    (e.g. ``{"Retry-After": "0"}``). ``delay`` seconds pass before the answer (on top of
    the server's own ``delay``); ``chunk_delay`` seconds pass between streamed chunks.
    ``prompt_tokens``/``completion_tokens`` default to estimates from the text lengths.
    ``finish_reason`` defaults to ``"tool_calls"`` with tool calls, else ``"stop"``.
    """

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None
    status: int = 200
    error_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    # Hostile replies: ``raw`` is sent as the body as it is (status ``status``, ``content_type``),
    # instead of a completion; ``trickle`` seconds pass between its bytes (a server that
    # keeps the connection alive without ever finishing); ``hang`` seconds pass after the
    # headers before anything else (a silent server).
    raw: bytes | None = None
    content_type: str = "application/json"
    trickle: float = 0.0
    hang: float = 0.0

    @property
    def is_error(self) -> bool:
        return self.status >= 400

    def error_json(self) -> dict[str, Any]:
        return self.error_body if self.error_body is not None else _error_body(self.status)

    def wire_tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls in wire form: ``{id, type: function, function: {name, arguments}}``."""
        calls = []
        for call in self.tool_calls or []:
            args = call.get("arguments", {})
            calls.append(
                {
                    "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    },
                }
            )
        return calls

    def resolved_finish_reason(self) -> str:
        if self.finish_reason:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


Responder = Callable[[dict[str, Any]], "Reply | str"]
"""Computes a reply from a request body (the parsed JSON); may return a plain string."""


@dataclass(frozen=True)
class Received:
    """One HTTP request as the server saw it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float

    @property
    def bearer(self) -> str | None:
        """The API key from ``Authorization: Bearer ...``, if any."""
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


def last_user_text(request: dict[str, Any]) -> str:
    """The text of the last user message of a chat request (text parts joined)."""
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(
                part.get("text", "")
                for part in content or []
                if isinstance(part, dict) and part.get("type") == "text"
            )
    return ""


def image_urls(request: dict[str, Any]) -> list[str]:
    """Every ``image_url`` URL (often a ``data:`` URL) in the request's messages."""
    urls = []
    for message in request.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    image = part.get("image_url")
                    urls.append(image.get("url") if isinstance(image, dict) else image)
    return urls


def _as_reply(value: Reply | str) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Reply(content=value)
    raise TypeError(f"expected Reply or str, got {type(value).__name__}")


def _validate_chat_request(body: Any) -> str | None:
    """A message like the API's for a malformed request, or None when it is well formed."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "Missing required parameter: 'model'."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "Missing required parameter: 'messages'."
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _VALID_ROLES:
            return f"Invalid value for 'messages[{i}].role'."
        if message["role"] == "tool" and not message.get("tool_call_id"):
            return f"Missing required parameter: 'messages[{i}].tool_call_id'."
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        # The real API insists on this (images aside, only text counts).
        texts = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [p.get("text", "") for p in content if isinstance(p, dict)]
        if "json" not in " ".join(texts).lower():
            return (
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'."
            )
    return None


def _prompt_tokens(body: dict[str, Any]) -> int:
    text_len = 0
    images = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            text_len += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text_len += len(part.get("text", ""))
                elif isinstance(part, dict) and part.get("type") == "image_url":
                    images += 1
    return max(1, math.ceil(text_len / 4) + 85 * images + 4 * len(body.get("messages") or []))


class _Abort(Exception):
    """The server is closing: drop the connection without answering."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True
    owner: OpenAIServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse-DNS lookup that can
        # hang on a machine without network; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and hang up are normal here; anything else is a bug.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "openai-test-double/1.0"
    sys_version = ""

    # --- plumbing ---------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._track(self.connection, add=False)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, _Abort):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Write a whole JSON response in one write (no Nagle/delayed-ACK stalls)."""
        body = json.dumps(payload).encode()
        lines = [f"HTTP/1.1 {status} {_phrase(status)}"]
        all_headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "x-request-id": f"req_{uuid.uuid4().hex}",
            "openai-processing-ms": "1",
            **(headers or {}),
        }
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.wfile.flush()

    def _read_json(self) -> tuple[Any, str | None]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
            self.close_connection = True
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None, "We could not parse the JSON body of your request: it is empty."
        try:
            return json.loads(raw), None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"We could not parse the JSON body of your request. ({exc})"

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    # --- endpoints --------------------------------------------------------------------

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self._route()
        owner._record(Received("GET", self.path, _lower(self.headers), None, time.time()))
        if path == "/v1/models":
            data = [_model_object(m) for m in owner.models()]
            self._send(200, {"object": "list", "data": data})
        elif path.startswith("/v1/models/") and path[len("/v1/models/") :] in owner.models():
            self._send(200, _model_object(path[len("/v1/models/") :]))
        elif path.startswith("/v1/models/"):
            name = path[len("/v1/models/") :]
            msg = f"The model '{name}' does not exist or you do not have access to it."
            self._send(404, _error_body(404, msg, "model_not_found"))
        else:
            self._not_found("GET")

    def do_POST(self) -> None:
        owner = self.server.owner
        path = self._route()
        body, problem = self._read_json()
        owner._record(Received("POST", self.path, _lower(self.headers), body, time.time()))
        if path != "/v1/chat/completions":
            self._not_found("POST")
            return
        if problem is None:
            problem = _validate_chat_request(body)
        if problem is not None:
            self._send(400, _error_body(400, problem))
            return
        if owner.api_key is not None and _lower(self.headers).get("authorization") != (
            f"Bearer {owner.api_key}"
        ):
            msg = "Incorrect API key provided. You can find your API key in your settings."
            self._send(401, _error_body(401, msg, "invalid_api_key"))
            return
        rejected = next((p for p in owner.rejects if p in body), None)
        if rejected is not None:
            self._send(400, _unsupported(rejected))
            return
        owner._saw_model(body["model"])
        n = body.get("n") or 1
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            self._send(400, _error_body(400, f"Invalid value for 'n': {n!r}."))
            return
        if owner.max_choices is not None:
            n = min(n, owner.max_choices)
        reply, extra_headers = owner._next_reply(body)
        others = [owner._next_reply(body)[0] for _ in range(n - 1)] if not reply.is_error else []
        owner._enter()
        try:
            owner._sleep(owner.delay + reply.delay)
            if reply.raw is not None:
                self._send_raw(reply)
            elif reply.is_error:
                self._send(reply.status, reply.error_json(), {**extra_headers, **reply.headers})
            elif body.get("stream"):
                self._stream(body, reply, reply.wire_tool_calls())
            else:
                completion = _completion(body, reply, reply.wire_tool_calls())
                for other in others:
                    more = _completion(body, other, other.wire_tool_calls())
                    choice = more["choices"][0]
                    choice["index"] = len(completion["choices"])
                    completion["choices"].append(choice)
                    completion["usage"]["completion_tokens"] += more["usage"]["completion_tokens"]
                    completion["usage"]["total_tokens"] += more["usage"]["completion_tokens"]
                self._send(200, completion, reply.headers)
        finally:
            owner._leave()

    def _send_raw(self, reply: Reply) -> None:
        """The scripted bytes as the body, whole or trickled one byte at a time."""
        owner = self.server.owner
        head = [
            f"HTTP/1.1 {reply.status} {_phrase(reply.status)}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.raw or b'')}",
            f"x-request-id: req_{uuid.uuid4().hex}",
        ] + [f"{k}: {v}" for k, v in reply.headers.items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        self.wfile.flush()
        owner._sleep(reply.hang)
        if reply.trickle <= 0:
            self.wfile.write(reply.raw or b"")
            self.wfile.flush()
            return
        for i in range(len(reply.raw or b"")):
            self.wfile.write((reply.raw or b"")[i : i + 1])
            self.wfile.flush()
            owner._sleep(reply.trickle)

    def do_PUT(self) -> None:
        self._not_found("PUT")

    def do_DELETE(self) -> None:
        self._not_found("DELETE")

    def do_PATCH(self) -> None:
        self._not_found("PATCH")

    def _not_found(self, method: str) -> None:
        msg = f"Invalid URL ({method} {self._route()})"
        headers = {}
        if method not in ("GET", "POST"):  # its body was not read: do not reuse the connection
            self.close_connection = True
            headers["Connection"] = "close"
        self._send(404, _error_body(404, msg, "unknown_url"), headers)

    def _stream(self, body: dict[str, Any], reply: Reply, calls: list[dict[str, Any]]) -> None:
        owner = self.server.owner
        head = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/event-stream; charset=utf-8",
            "Cache-Control: no-cache",
            "Transfer-Encoding: chunked",
            f"x-request-id: req_{uuid.uuid4().hex}",
        ] + [f"{k}: {v}" for k, v in reply.headers.items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        first = True
        for event in _stream_events(body, reply, calls):
            if not first:
                owner._sleep(reply.chunk_delay)
            first = False
            data = f"data: {event}\n\n".encode()
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "test-double"}


def _usage(body: dict[str, Any], reply: Reply, calls: list[dict[str, Any]]) -> dict[str, int]:
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else _prompt_tokens(body)
    if reply.completion_tokens is not None:
        completion = reply.completion_tokens
    else:
        text = (reply.content or "") + (reply.refusal or "")
        text += "".join(c["function"]["name"] + c["function"]["arguments"] for c in calls)
        completion = max(1, _estimate_tokens(text))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(body: dict[str, Any], reply: Reply, calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.content,
        "refusal": reply.refusal,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:29]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reply.resolved_finish_reason(),
            }
        ],
        "usage": _usage(body, reply, calls),
        "service_tier": "default",
        "system_fingerprint": "fp_test_double",
    }


def _pieces(text: str) -> list[str]:
    """Split text into word-sized pieces whose concatenation is the text."""
    return re.findall(r"\S+\s*|\s+", text)


def _stream_events(
    body: dict[str, Any], reply: Reply, calls: list[dict[str, Any]]
) -> Iterable[str]:
    """The ``data:`` payloads of a streamed completion, ending with ``[DONE]``."""
    chunk_id = f"chatcmpl-{uuid.uuid4().hex[:29]}"
    created = int(time.time())
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        payload: dict[str, Any] = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body["model"],
            "service_tier": "default",
            "system_fingerprint": "fp_test_double",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            payload["usage"] = None
        return json.dumps(payload)

    first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    if reply.content is None:
        first["content"] = None
    yield chunk(first)
    for piece in _pieces(reply.content or ""):
        yield chunk({"content": piece})
    for piece in _pieces(reply.refusal or ""):
        yield chunk({"refusal": piece})
    for index, call in enumerate(calls):
        fn = call["function"]
        head = {"name": fn["name"], "arguments": ""}
        yield chunk(
            {
                "tool_calls": [
                    {"index": index, "id": call["id"], "type": "function", "function": head}
                ]
            }
        )
        args = fn["arguments"]
        for start in range(0, len(args), 8):
            frag = {"arguments": args[start : start + 8]}
            yield chunk({"tool_calls": [{"index": index, "function": frag}]})
    yield chunk({}, reply.resolved_finish_reason())
    if include_usage:
        yield json.dumps(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "service_tier": "default",
                "system_fingerprint": "fp_test_double",
                "choices": [],
                "usage": _usage(body, reply, calls),
            }
        )
    yield "[DONE]"


class OpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 answering from a script.

    Args:
        replies: replies to give, in order (a plain string is ``Reply(content=...)``).
        default: answer when the queue is empty: a ``Reply``/string, or a responder.
        responder: computes the answer from the request body when the queue is empty
            (the same as passing a callable as ``default``; give one or the other).
        delay: seconds added before every answer (e.g. to model a slow hosted model).
        models: names listed by ``GET /v1/models`` (request models are added as seen).
        api_key: when set, chat requests must carry ``Authorization: Bearer <api_key>``
            or get a 401 ``invalid_api_key`` error.
        rejects: request parameters this endpoint refuses, as reasoning models do: a
            request carrying one gets HTTP 400 naming it (``param`` and message), e.g.
            ``rejects=("temperature", "n")`` or ``("max_tokens",)``.
        max_choices: the most choices one request gets (``n`` beyond it is cut, as some
            servers do); default: as many as ``n`` asks. Each choice is the next reply.

    Start it with ``with`` (or :meth:`start`/:meth:`close`). Received requests are in
    :attr:`requests` (chat bodies) and :attr:`received` (every request, with headers).
    """

    def __init__(
        self,
        replies: Iterable[Reply | str] = (),
        *,
        default: Reply | str | Responder | None = None,
        responder: Responder | None = None,
        delay: float = 0.0,
        models: Iterable[str] = ("test-vlm",),
        api_key: str | None = None,
        rejects: Iterable[str] = (),
        max_choices: int | None = None,
    ) -> None:
        if responder is not None and default is not None:
            raise ValueError("give either default= or responder=, not both")
        if callable(default):
            responder, default = default, None
        self.delay = float(delay)
        self.api_key = api_key
        self.rejects = tuple(rejects)
        self.max_choices = max_choices
        self._default: Reply | None = None if default is None else _as_reply(default)
        self._responder = responder
        self._queue: deque[Reply] = deque(_as_reply(r) for r in replies)
        self._models: list[str] = list(models)
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._closing.clear()
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"OpenAIServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop at once: delayed answers are dropped and open connections are cut."""
        httpd = self._httpd
        if httpd is None:
            return
        self._closing.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- addresses ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("OpenAIServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The server root, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What clients take as ``base_url``: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    # --- script ---------------------------------------------------------------------

    def push(self, *replies: Reply | str) -> None:
        """Queue more replies (after those already queued)."""
        with self._lock:
            self._queue.extend(_as_reply(r) for r in replies)

    @property
    def pending(self) -> int:
        """How many queued replies are not yet used."""
        with self._lock:
            return len(self._queue)

    # --- what arrived ---------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        """Every request so far (any path), with its headers; a snapshot."""
        with self._lock:
            return list(self._received)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of the ``POST /v1/chat/completions`` requests so far; a snapshot."""
        return [
            r.body
            for r in self.received
            if r.method == "POST"
            and r.path.split("?", 1)[0].rstrip("/") == "/v1/chat/completions"
            and isinstance(r.body, dict)
        ]

    @property
    def chat_received(self) -> list[Received]:
        """Like :attr:`requests` but the full records (headers included)."""
        return [
            r
            for r in self.received
            if r.method == "POST" and r.path.split("?", 1)[0].rstrip("/") == "/v1/chat/completions"
        ]

    @property
    def in_flight(self) -> int:
        """Chat requests being answered right now (waiting out a delay or streaming)."""
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most chat requests answered at once so far (checks a client's concurrency)."""
        with self._lock:
            return self._peak_in_flight

    def models(self) -> list[str]:
        """Configured model names, then any others seen in requests."""
        with self._lock:
            return list(self._models)

    # --- used by the handler --------------------------------------------------------

    def _record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)

    def _saw_model(self, model: str) -> None:
        with self._lock:
            if model not in self._models:
                self._models.append(model)

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _sleep(self, seconds: float) -> None:
        """Wait without holding any lock; abort the answer if the server closes."""
        if seconds > 0 and self._closing.wait(seconds):
            raise _Abort
        if self._closing.is_set():
            raise _Abort

    def _next_reply(self, body: dict[str, Any]) -> tuple[Reply, dict[str, str]]:
        with self._lock:
            queued = self._queue.popleft() if self._queue else None
            number = sum(1 for r in self._received if r.method == "POST")
        if queued is not None:
            return queued, {}
        if self._responder is not None:
            try:
                return _as_reply(self._responder(body)), {}
            except Exception as exc:  # the test's bug: make it visible to the test
                detail = "".join(traceback.format_exception_only(exc)).strip()
                msg = f"OpenAIServer responder raised: {detail}"
                return Reply(status=500, error_body=_error_body(500, msg, "responder_error")), {
                    "x-should-retry": "false"
                }
        if self._default is not None:
            return self._default, {}
        msg = (
            f"OpenAIServer script ran out: no reply queued for chat request #{number} "
            "and no default= or responder= given; push() more replies."
        )
        return Reply(status=500, error_body=_error_body(500, msg, "script_exhausted")), {
            "x-should-retry": "false"
        }
