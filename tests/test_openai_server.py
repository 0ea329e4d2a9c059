"""The OpenAI test double speaks the real protocol: proven with the real clients.

Every test talks HTTP to ``tests.openai_server.OpenAIServer`` through ``openai.OpenAI`` /
``openai.AsyncOpenAI`` or ``langchain_openai.ChatOpenAI``, so a wire-format mistake in the
double shows up here as a client parse error rather than in the product's tests.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.openai_server import OpenAIServer, Reply, image_urls, last_user_text

MODEL = "test-vlm"
USER = [{"role": "user", "content": "Where was this photo taken?"}]


def client(srv: OpenAIServer, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=srv.base_url, api_key="sk-test", **kwargs)


def chat(srv: OpenAIServer, **kwargs) -> ChatOpenAI:
    kwargs.setdefault("max_retries", 0)
    return ChatOpenAI(base_url=srv.base_url, api_key="sk-test", model=MODEL, **kwargs)


# --- openai client, non-streaming ---------------------------------------------------------


def test_content_usage_model_and_headers_arrive() -> None:
    with OpenAIServer([Reply("Paris, France", prompt_tokens=120, completion_tokens=4)]) as srv:
        resp = client(srv).chat.completions.create(model="gpt-x", messages=USER, temperature=0.2)

        assert resp.object == "chat.completion"
        assert resp.id.startswith("chatcmpl-")
        assert resp.model == "gpt-x"  # echoed from the request
        choice = resp.choices[0]
        assert choice.message.role == "assistant"
        assert choice.message.content == "Paris, France"
        assert choice.message.tool_calls is None
        assert choice.finish_reason == "stop"
        assert resp.usage is not None
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (120, 4)
        assert resp.usage.total_tokens == 124
        assert resp._request_id and resp._request_id.startswith("req_")

        assert srv.requests == [
            {"model": "gpt-x", "messages": USER, "temperature": 0.2},
        ]
        (received,) = srv.chat_received
        assert received.bearer == "sk-test"
        assert received.headers["content-type"] == "application/json"


def test_usage_is_estimated_when_not_given() -> None:
    with OpenAIServer(["a reply of some length"]) as srv:
        usage = client(srv).chat.completions.create(model=MODEL, messages=USER).usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_refusal() -> None:
    with OpenAIServer([Reply(refusal="I can't help with locating people.")]) as srv:
        msg = client(srv).chat.completions.create(model=MODEL, messages=USER).choices[0].message
    assert msg.content is None
    assert msg.refusal == "I can't help with locating people."


def test_tool_calls() -> None:
    calls = [
        {"name": "geocode", "arguments": {"place": "Eiffel Tower"}, "id": "call_fixed"},
        {"name": "reverse_geocode", "arguments": '{"lat": 48.85, "lon": 2.29}'},
    ]
    with OpenAIServer([Reply(tool_calls=calls)]) as srv:
        choice = client(srv).chat.completions.create(model=MODEL, messages=USER).choices[0]
    assert choice.finish_reason == "tool_calls"
    first, second = choice.message.tool_calls or []
    assert first.id == "call_fixed" and first.type == "function"
    assert first.function.name == "geocode"
    assert first.function.arguments == '{"place": "Eiffel Tower"}'
    assert second.id.startswith("call_")
    assert second.function.arguments == '{"lat": 48.85, "lon": 2.29}'


# --- errors -------------------------------------------------------------------------------


def test_429_is_rate_limit_error_with_headers_and_body() -> None:
    reply = Reply(status=429, headers={"Retry-After": "0"})
    with OpenAIServer([reply]) as srv, pytest.raises(openai.RateLimitError) as info:
        client(srv).chat.completions.create(model=MODEL, messages=USER)
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "0"
    assert isinstance(err.body, dict) and err.body["code"] == "rate_limit_exceeded"


def test_500_is_internal_server_error_and_retries_consume_the_script() -> None:
    with OpenAIServer([Reply(status=500)]) as srv:
        with pytest.raises(openai.InternalServerError):
            client(srv).chat.completions.create(model=MODEL, messages=USER)
        # The client's own retries go through the script (retry-after-ms keeps them fast;
        # "Retry-After: 0" would not: the client then falls back to ~0.5 s backoff).
        srv.push(Reply(status=503, headers={"retry-after-ms": "1"}), "recovered")
        resp = client(srv, max_retries=2).chat.completions.create(model=MODEL, messages=USER)
        assert resp.choices[0].message.content == "recovered"
        assert len(srv.requests) == 3 and srv.pending == 0


def test_custom_error_body_reaches_the_client() -> None:
    body = {"error": {"message": "model is overloaded", "type": "server_error", "code": "busy"}}
    with (
        OpenAIServer([Reply(status=503, error_body=body)]) as srv,
        pytest.raises(openai.InternalServerError) as info,
    ):
        client(srv).chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 503
    assert "model is overloaded" in info.value.message


def test_delay_beyond_client_timeout_is_api_timeout_and_server_survives() -> None:
    with OpenAIServer([Reply("too late", delay=2.0), "on time"]) as srv:
        c = client(srv, timeout=0.2)
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model=MODEL, messages=USER)
        assert time.monotonic() - start < 1.5
        # The abandoned request does not break the server for the next one.
        assert c.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content == (
            "on time"
        )
        start = time.monotonic()
    assert time.monotonic() - start < 1.0  # close() does not wait out the delayed reply


def test_exhausted_script_is_a_clear_500_without_retries() -> None:
    with OpenAIServer(["only one"]) as srv:
        c = client(srv, max_retries=2)
        c.chat.completions.create(model=MODEL, messages=USER)
        with pytest.raises(openai.InternalServerError, match="script ran out"):
            c.chat.completions.create(model=MODEL, messages=USER)
        assert len(srv.requests) == 2  # x-should-retry: false stopped the client's retries


def test_api_key_check_and_bad_requests() -> None:
    with OpenAIServer(default="ok", api_key="sk-right") as srv:
        wrong = openai.OpenAI(base_url=srv.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=MODEL, messages=USER)
        right = openai.OpenAI(base_url=srv.base_url, api_key="sk-right", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="tool_call_id"):
            right.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "x"}])
        with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
            right.chat.completions.create(
                model=MODEL, messages=USER, response_format={"type": "json_object"}
            )


def test_models_and_unknown_paths() -> None:
    with OpenAIServer(default="ok", models=["vlm-a"]) as srv:
        c = client(srv)
        c.chat.completions.create(model="vlm-b", messages=USER)
        assert [m.id for m in c.models.list()] == ["vlm-a", "vlm-b"]
        assert c.models.retrieve("vlm-a").id == "vlm-a"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("nope")
        resp = httpx.post(f"{srv.base_url}/responses", json={"model": MODEL, "input": "hi"})
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == "Invalid URL (POST /v1/responses)"


# --- script sources -----------------------------------------------------------------------


def test_responder_push_and_default() -> None:
    def echo(request: dict) -> Reply:
        return Reply(f"echo: {last_user_text(request)}")

    with OpenAIServer(["queued first"], responder=echo) as srv:
        c = client(srv)
        ask = [{"role": "user", "content": [{"type": "text", "text": "Lyon?"}]}]
        assert c.chat.completions.create(model=MODEL, messages=ask).choices[0].message.content == (
            "queued first"
        )
        assert c.chat.completions.create(model=MODEL, messages=ask).choices[0].message.content == (
            "echo: Lyon?"
        )
        srv.push("pushed")
        assert srv.pending == 1
        assert c.chat.completions.create(model=MODEL, messages=ask).choices[0].message.content == (
            "pushed"
        )

    with OpenAIServer(default=Reply("always")) as srv:
        c = client(srv)
        contents = {
            c.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content
            for _ in range(3)
        }
    assert contents == {"always"}


def test_responder_exception_is_visible() -> None:
    def broken(request: dict) -> Reply:
        raise KeyError("no such photo")

    with OpenAIServer(responder=broken) as srv:
        with pytest.raises(openai.InternalServerError, match="no such photo"):
            client(srv, max_retries=2).chat.completions.create(model=MODEL, messages=USER)
        assert len(srv.requests) == 1


def test_image_part_arrives_intact() -> None:
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0fake-jpeg-bytes\xff\xd9").decode()
    url = f"data:image/jpeg;base64,{jpeg}"
    content = [
        {"type": "text", "text": "Where is this?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]
    with OpenAIServer(["Oslo", "Oslo"]) as srv:
        client(srv).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}]
        )
        chat(srv).invoke(
            [HumanMessage(content=[content[0], {"type": "image_url", "image_url": {"url": url}}])]
        )
        first, second = srv.requests
    assert first["messages"][0]["content"] == content
    assert image_urls(first) == [url] and image_urls(second) == [url]
    assert last_user_text(second) == "Where is this?"


# --- openai client, streaming -------------------------------------------------------------


def test_stream_content_in_several_chunks_with_usage() -> None:
    text = "The photo shows the harbour of Bergen, Norway.\nConfidence: high."
    with OpenAIServer([Reply(text, prompt_tokens=50, completion_tokens=12)]) as srv:
        stream = client(srv).chat.completions.create(
            model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        assert srv.requests[0]["stream"] is True
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 3
    assert "".join(pieces) == text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 62


def test_stream_without_usage_has_no_usage_chunk() -> None:
    with OpenAIServer(["short answer"]) as srv:
        chunks = list(client(srv).chat.completions.create(model=MODEL, messages=USER, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_stream_tool_calls_accumulate_with_the_openai_helper() -> None:
    calls = [
        {"name": "geocode", "arguments": {"place": "Bryggen, Bergen", "country": "NO"}},
        {"name": "lookup", "arguments": {"id": 7}, "id": "call_two"},
    ]
    with (
        OpenAIServer([Reply(tool_calls=calls)]) as srv,
        client(srv).chat.completions.stream(model=MODEL, messages=USER) as stream,
    ):
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in events
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    got = [(t.function.name, t.function.arguments) for t in choice.message.tool_calls or []]
    assert got == [
        ("geocode", '{"place": "Bryggen, Bergen", "country": "NO"}'),
        ("lookup", '{"id": 7}'),
    ]
    assert (choice.message.tool_calls or [])[1].id == "call_two"


def test_stream_error_status_is_raised_before_the_stream() -> None:
    with OpenAIServer([Reply(status=429)]) as srv, pytest.raises(openai.RateLimitError):
        client(srv).chat.completions.create(model=MODEL, messages=USER, stream=True)


# --- langchain_openai.ChatOpenAI ----------------------------------------------------------


def test_langchain_invoke() -> None:
    with OpenAIServer([Reply("Kyoto, Japan", prompt_tokens=30, completion_tokens=3)]) as srv:
        msg = chat(srv, temperature=0.0).invoke(
            [SystemMessage("You geolocate photos."), HumanMessage("Where?")]
        )
        (body,) = srv.requests
    assert msg.content == "Kyoto, Japan"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["input_tokens"] == 30
    assert msg.usage_metadata["output_tokens"] == 3
    assert msg.response_metadata["model_name"] == MODEL
    assert msg.response_metadata["finish_reason"] == "stop"
    assert body["model"] == MODEL
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_langchain_refusal_and_json_mode() -> None:
    replies = [Reply(refusal="I won't."), Reply('{"lat": 35.0, "lon": 135.7}')]
    with OpenAIServer(replies) as srv:
        llm = chat(srv)
        refused = llm.invoke("Where?")
        assert refused.additional_kwargs["refusal"] == "I won't."
        answer = llm.invoke("Answer in JSON.", response_format={"type": "json_object"})
        assert answer.content == '{"lat": 35.0, "lon": 135.7}'
        assert srv.requests[1]["response_format"] == {"type": "json_object"}


def test_langchain_stream() -> None:
    text = "Probably Lisbon: trams, azulejos and the river."
    with OpenAIServer([Reply(text), Reply(text)]) as srv:
        llm = chat(srv)
        chunks = list(llm.stream("Where?"))
        assert len(chunks) > 3
        assert "".join(str(c.content) for c in chunks) == text
        with_usage = list(chat(srv, stream_usage=True).stream("Where?"))
        assert srv.requests[1]["stream_options"] == {"include_usage": True}
    total = with_usage[0]
    for c in with_usage[1:]:
        total += c
    assert total.content == text
    assert total.usage_metadata is not None and total.usage_metadata["total_tokens"] > 0


@tool
def geocode(place: str) -> str:
    """Coordinates of a named place."""
    return '{"lat": 38.7223, "lon": -9.1393}'


def test_langchain_tool_call_round_trip() -> None:
    first = Reply(tool_calls=[{"name": "geocode", "arguments": {"place": "Lisbon"}}])
    with OpenAIServer([first, "Lisbon is at 38.72, -9.14."]) as srv:
        llm = chat(srv).bind_tools([geocode])
        messages: list = [HumanMessage("Where is Lisbon?")]
        ai = llm.invoke(messages)
        assert ai.tool_calls and ai.tool_calls[0]["name"] == "geocode"
        assert ai.tool_calls[0]["args"] == {"place": "Lisbon"}
        call_id = ai.tool_calls[0]["id"]
        messages += [
            ai,
            ToolMessage(geocode.invoke(ai.tool_calls[0]["args"]), tool_call_id=call_id),
        ]
        final = llm.invoke(messages)
        assert final.content == "Lisbon is at 38.72, -9.14."

        req1, req2 = srv.requests
    assert req1["tools"][0]["function"]["name"] == "geocode"
    assert [m["role"] for m in req2["messages"]] == ["user", "assistant", "tool"]
    assistant, tool_msg = req2["messages"][1], req2["messages"][2]
    assert assistant["tool_calls"][0]["id"] == call_id
    assert tool_msg["tool_call_id"] == call_id
    assert tool_msg["content"] == '{"lat": 38.7223, "lon": -9.1393}'


def test_langchain_streamed_tool_call() -> None:
    call = {"name": "geocode", "arguments": {"place": "Porto, Portugal"}, "id": "call_p"}
    with OpenAIServer([Reply(tool_calls=[call])]) as srv:
        chunks = list(chat(srv).bind_tools([geocode]).stream("Where is Porto?"))
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert isinstance(total, AIMessageChunk)
    assert len(chunks) > 3
    assert total.tool_calls == [
        {
            "name": "geocode",
            "args": {"place": "Porto, Portugal"},
            "id": "call_p",
            "type": "tool_call",
        }
    ]


# --- concurrency and shutdown -------------------------------------------------------------


def test_concurrent_delayed_requests_overlap() -> None:
    n, concurrency, delay = 48, 16, 0.2

    async def run(srv: OpenAIServer) -> list[str]:
        sem = asyncio.Semaphore(concurrency)
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0) as c:

            async def one(i: int) -> str:
                async with sem:
                    msgs = [{"role": "user", "content": f"photo {i}"}]
                    resp = await c.chat.completions.create(model=MODEL, messages=msgs)
                    return resp.choices[0].message.content or ""

            return await asyncio.gather(*(one(i) for i in range(n)))

    def echo(request: dict) -> Reply:
        return Reply(last_user_text(request))

    with OpenAIServer(responder=echo, delay=delay) as srv:
        start = time.monotonic()
        answers = asyncio.run(run(srv))
        elapsed = time.monotonic() - start
        assert srv.peak_in_flight == concurrency and srv.in_flight == 0
    assert answers == [f"photo {i}" for i in range(n)]
    # Ideal is 0.6 s, one at a time would be 9.6 s; the bound leaves room for a busy CI box.
    ideal, serial = n / concurrency * delay, n * delay
    assert elapsed < serial / 4, f"{elapsed:.2f}s for an ideal {ideal:.2f}s"


def test_langchain_async_concurrency() -> None:
    async def run(srv: OpenAIServer) -> list:
        llm = chat(srv)
        return await asyncio.gather(*(llm.ainvoke(f"q{i}") for i in range(16)))

    with OpenAIServer(default="same", delay=0.2) as srv:
        start = time.monotonic()
        answers = asyncio.run(run(srv))
        elapsed = time.monotonic() - start
    assert [a.content for a in answers] == ["same"] * 16
    assert elapsed < 16 * 0.2 / 2  # overlapping, not one after another


def test_close_is_prompt_with_requests_in_flight() -> None:
    errors: list[Exception] = []
    srv = OpenAIServer(default=Reply("never", delay=30)).start()

    def call() -> None:
        try:
            client(srv, timeout=60).chat.completions.create(model=MODEL, messages=USER)
        except Exception as exc:  # recorded for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(srv.requests) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    srv.close()
    assert time.monotonic() - start < 1.0
    for t in threads:
        t.join(timeout=5)
    assert len(errors) == 4
    assert all(isinstance(e, openai.APIConnectionError) for e in errors)
