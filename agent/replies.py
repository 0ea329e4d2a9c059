"""Reading what a model endpoint sends back, with limits: the one reader of model replies.

Whatever arrives (an invalid or empty JSON body, a JSON list, ``choices`` missing or
empty, a null message, a body nested 100,000 deep, a gigabyte, a broken event stream)
becomes a ``ModelResponseError`` with a one-line reason, never another exception:

* ``LimitedTransport`` sits under the HTTP client: it stops reading any body past
  ``MAX_REPLY_BYTES`` and checks every complete (non-streamed) chat completion with
  ``read_completion`` before the client library parses it.
* ``read_completion`` checks the shape the client library relies on.
* ``find_json_object`` finds the answer object in the model's text in linear time,
  even in a reply made of nothing but ``{``.

Nesting is bounded by the JSON decoder itself: it raises ``RecursionError`` past the
interpreter's recursion limit (~1000 levels), which is read as "nested too deeply".
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openai

from .errors import ModelResponseError

# The HTTP library the openai client is built on (``httpx``, or its successor ``httpx2`` in
# newer releases): the transport below must be one of its classes.
httpx: Any = sys.modules[openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0]]

# A chat completion is a few KB; the answer object well under one. Anything larger is not
# a reply worth reading, and would only cost memory.
MAX_REPLY_BYTES = 8_000_000
MAX_ANSWER_CHARS = 200_000  # of the model's text, searched for the answer object


def _loads(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise ModelResponseError(f"{what} is nested too deeply to be a reply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelResponseError(f"{what} is not valid JSON ({_first_line(str(exc))})") from None


def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_completion(body: bytes, where: str = "the endpoint") -> dict[str, Any]:
    """A chat completion body as a dict, or ``ModelResponseError`` saying what is wrong with it."""
    if len(body) > MAX_REPLY_BYTES:
        raise ModelResponseError(f"{where} sent a reply over {MAX_REPLY_BYTES:,} bytes")
    if not body.strip():
        raise ModelResponseError(f"{where} sent an empty reply body")
    data = _loads(body, f"the reply of {where}")
    if not isinstance(data, dict):
        raise ModelResponseError(f"{where} sent a JSON {type(data).__name__}, not a chat completion object")
    if isinstance(data.get("error"), dict | str):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ModelResponseError(f"{where} answered with an error: {_first_line(str(message))}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ModelResponseError(f"{where} sent a reply without choices")
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise ModelResponseError(f"{where} sent a reply whose first choice has no message")
    message = choice["message"]
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise ModelResponseError(f"{where} sent a message whose content is a {type(content).__name__}")
    calls = message.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise ModelResponseError(f"{where} sent malformed tool calls")
    if content is None and not calls and not message.get("refusal"):
        raise ModelResponseError(f"{where} sent a message with no content")
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise ModelResponseError(f"{where} sent malformed token usage")
    return data


# ------------------------------------------------------------------ the answer in the text


def _spans(text: str) -> list[tuple[int, int, int]]:
    """``(start, end, depth)`` of every balanced ``{...}`` of ``text``, in one pass.

    Quotes only count inside braces (prose around the object may hold a stray ``"``).
    An unclosed ``{`` is dropped when the text ends, so ``{{{{`` gives nothing.
    """
    spans: list[tuple[int, int, int]] = []
    stack: list[int] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            start = stack.pop()
            spans.append((start, i + 1, len(stack)))
        elif ch == '"' and stack:
            in_string = True
    return spans


def find_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (outermost first), in time linear in its length.

    Each balanced ``{...}`` is decoded at most once, outermost spans first; an inner span is
    tried only when its outer one is not JSON, and the total decoded is at most 4x the text,
    so a reply of 100,000 ``{`` costs one pass, not 100,000 decodes.
    """
    text = text[:MAX_ANSWER_CHARS]
    budget = 4 * len(text) + 64
    # Outermost first, then by position: depth 0 spans are disjoint, so decoding them all
    # reads the text at most once; deeper ones are the fallback.
    for start, end, _depth in sorted(_spans(text), key=lambda s: (s[2], s[0])):
        budget -= end - start
        if budget < 0:
            return None
        try:
            obj = json.loads(text[start:end])
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


def fenced_block(text: str) -> str | None:
    """The body of the first ```` ``` ```` (or ```` ```json ````) block, found without a backtracking regex."""
    start = text.find("```")
    if start == -1:
        return None
    end = text.find("```", start + 3)
    if end == -1:
        return None
    body = text[start + 3 : end]
    if body[:4].lower() == "json":
        body = body[4:]
    return body


# ------------------------------------------------------------------ the HTTP transport


class _LimitedStream(httpx.AsyncByteStream):  # type: ignore[name-defined]
    def __init__(self, stream: httpx.AsyncByteStream, limit: int, where: str):
        self._stream, self._limit, self._where, self._seen = stream, limit, where, 0

    async def __aiter__(self):
        async for chunk in self._stream:
            self._seen += len(chunk)
            if self._seen > self._limit:
                raise ModelResponseError(f"{self._where} sent a reply over {self._limit:,} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class LimitedTransport(httpx.AsyncBaseTransport):  # type: ignore[name-defined]
    """An HTTP transport that bounds every reply and checks chat completions before parsing.

    A ``ModelResponseError`` raised here reaches the client library as the cause of its
    connection error; ``agent.llm.map_error`` finds it there.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, where: str, limit: int = MAX_REPLY_BYTES):
        self.inner, self.where, self.limit = inner, where, limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await response.aclose()
            raise ModelResponseError(f"{self.where} sent a reply of {int(declared):,} bytes, over {self.limit:,}")
        stream = _LimitedStream(response.stream, self.limit, self.where)  # type: ignore[arg-type]
        content_type = response.headers.get("content-type", "")
        if not (200 <= response.status_code < 300 and request.url.path.endswith("/chat/completions")):
            return httpx.Response(response.status_code, headers=response.headers, stream=stream,
                                  extensions=response.extensions, request=request)
        if "text/event-stream" in content_type:
            return httpx.Response(response.status_code, headers=response.headers, stream=stream,
                                  extensions=response.extensions, request=request)
        # Read (decoded, bounded) and checked here, so that the client library only ever
        # parses a well-formed completion.
        received = httpx.Response(response.status_code, headers=response.headers, stream=stream, request=request)
        try:
            body = await received.aread()
        finally:
            await received.aclose()
        read_completion(body, self.where)
        skip = ("content-encoding", "content-length", "transfer-encoding")
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in skip]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_REPLY_BYTES",
    "LimitedTransport",
    "fenced_block",
    "find_json_object",
    "read_completion",
]
