"""The streaming routes' HTTP contract in-process: framing, headers, errors as JSON."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dependency_injector import providers
from litestar.testing import AsyncTestClient

from application.errors import ModelTimeout
from application.model_routing import ModelRoute
from domain.answer import Usage
from entrypoints.asgi import create_app
from entrypoints.container import Container
from entrypoints.http import streams
from tests.unit.fakes import StreamingModel
from tests.unit.test_http_api import DownHistory, settings

Client = AsyncTestClient[Any]


def parse(body: str) -> list[dict[str, Any]]:
    """SSE frames as {"event", "id", "data"} (comments as {"comment"})."""
    frames = []
    for block in body.split("\n\n"):
        if not block:
            continue
        frame: dict[str, Any] = {}
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "":
                frame["comment"] = value
            else:
                frame[field] = json.loads(value) if field == "data" else value
        frames.append(frame)
    return frames


@pytest.fixture
def model() -> StreamingModel:
    return StreamingModel("Once", " upon", " a time")


@pytest.fixture
async def client(model: StreamingModel) -> AsyncIterator[Client]:
    config = settings()
    container = Container(settings=config)
    container.model_routes.override(providers.Object([ModelRoute("primary", model)]))
    async with AsyncTestClient(create_app(config, container)) as client:
        yield client


async def test_a_stream_is_server_sent_events_that_proxies_do_not_buffer(client: Client) -> None:
    response = await client.post("/chat/stream", json={"session_id": "s", "message": "hi"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    frames = parse(response.text)
    assert [f["event"] for f in frames] == ["session", "delta", "delta", "delta", "done"]
    reply_id = frames[0]["id"].rsplit("-", 1)[0]
    assert [f["id"] for f in frames] == [f"{reply_id}-{n}" for n in range(5)]
    assert frames[-1]["data"]["response"] == "Once upon a time"
    shown = (await client.get("/chat/s")).json()["messages"]
    assert [m["content"] for m in shown] == ["hi", "Once upon a time"]


async def test_re_attaching_over_http_resumes_after_the_last_event_id(client: Client) -> None:
    frames = parse((await client.post("/chat/stream", json={"message": "hi"})).text)
    session_id = frames[0]["data"]["session_id"]
    await asyncio.sleep(0.2)  # the producer publishes its last batch

    rest = await client.get(
        f"/chat/{session_id}/stream", headers={"Last-Event-ID": frames[2]["id"]}
    )

    assert rest.status_code == 200
    assert parse(rest.text) == frames[3:]
    done = await client.get(
        f"/chat/{session_id}/stream", headers={"Last-Event-ID": frames[-1]["id"]}
    )
    assert done.status_code == 204


@pytest.mark.parametrize(
    ("failure", "status"),
    [(None, 502), (ModelTimeout("the test provider did not answer within 1 seconds"), 504)],
)
async def test_a_model_failing_before_its_first_text_is_a_json_error(
    client: Client, model: StreamingModel, failure: Exception | None, status: int
) -> None:
    model.fail_at = 0
    if failure is not None:
        model.failure = failure

    response = await client.post("/chat/stream", json={"session_id": "s", "message": "hi"})

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["status_code"] == status
    assert (await client.get("/chat/s")).status_code == 404


async def test_a_model_failing_after_its_first_text_ends_the_stream_with_error(
    client: Client, model: StreamingModel
) -> None:
    model.fail_at = 1

    response = await client.post("/chat/stream", json={"session_id": "s", "message": "hi"})

    frames = parse(response.text)
    assert response.status_code == 200
    assert [f["event"] for f in frames] == ["session", "delta", "error"]
    assert frames[-1]["data"]["status_code"] == 502
    assert (await client.get("/chat/s")).status_code == 404


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"message": "   "}, "message must not be empty"),
        ({"message": "hi", "stream": True}, "stream"),
        ({"message": "x" * 51}, "the limit is 50"),
    ],
)
async def test_bad_input_is_refused_as_json_before_anything_streams(
    client: Client, body: dict[str, Any], detail: str
) -> None:
    response = await client.post("/chat/stream", json=body)

    assert response.status_code == 400
    assert detail in response.json()["detail"]


async def test_a_store_down_is_503_before_anything_streams(model: StreamingModel) -> None:
    config = settings()
    container = Container(settings=config)
    container.model_routes.override(providers.Object([ModelRoute("primary", model)]))
    container.history.override(providers.Object(DownHistory()))
    async with AsyncTestClient(create_app(config, container)) as client:
        response = await client.post("/chat/stream", json={"message": "hi"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


async def test_re_attach_and_stop_say_when_there_is_nothing(client: Client) -> None:
    assert (await client.get("/chat/none/stream")).status_code == 404
    assert (await client.post("/chat/none/stop")).status_code == 404
    bad = await client.get("/chat/none/stream", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["detail"]


class PausingModel(StreamingModel):
    """Pauses 1.2 s (over two heartbeats) after its first text (the app runs on the test
    client's own loop, so a test cannot hold it with an asyncio.Event)."""

    async def stream(self, conversation: Any) -> AsyncIterator[str | Usage]:
        async for index, chunk in _numbered(super().stream(conversation)):
            if index == 1:
                await asyncio.sleep(1.2)
            yield chunk


async def _numbered(chunks: AsyncIterator[str | Usage]) -> AsyncIterator[tuple[int, str | Usage]]:
    index = 0
    async for chunk in chunks:
        yield index, chunk
        index += 1


async def test_a_quiet_stream_sends_keep_alive_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "KEEP_ALIVE_SECONDS", 0.05)
    config = settings()
    container = Container(settings=config)
    container.model_routes.override(providers.Object([ModelRoute("primary", PausingModel())]))
    async with AsyncTestClient(create_app(config, container)) as client:
        response = await client.post("/chat/stream", json={"message": "hi"})

    frames = parse(response.text)
    assert {"comment": "keep-alive"} in frames
    assert frames[-1]["event"] == "done"


async def test_openapi_describes_the_event_stream(client: Client) -> None:
    document = (await client.get("/schema/openapi.json")).json()

    for path, method in [("/chat/stream", "post"), ("/chat/{session_id}/stream", "get")]:
        ok = document["paths"][path][method]["responses"]["200"]
        assert "text/event-stream" in ok["content"]
        assert "`delta`" in ok["description"]
    stop = document["paths"]["/chat/{session_id}/stop"]["post"]["responses"]
    assert {"202", "404"} <= set(stop)
