"""A conversation over HTTP with the openai provider: what the provider sees, what is stored."""

import re
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.conftest import Service, ServiceLauncher, openai_config
from tests.support.provider_stub import ProviderStub, json_reply, openai_body
from tests.support.redis_server import RedisServer

SYSTEM_PROMPT = "You are a terse test assistant."
MAX_MESSAGES = 6
RFC_3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher, module_stub: ProviderStub, module_redis: RedisServer
) -> Service:
    return module_launch(
        {
            "redis": {"url": module_redis.url},
            "history": {"max_messages": str(MAX_MESSAGES)},
            "llm": openai_config(
                module_stub,
                api_key="sk-conversation",
                model="e2e-model",
                system_prompt=SYSTEM_PROMPT,
                temperature="0.2",
                max_tokens="64",
            ),
        }
    )


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    messages = []
    for question, answer in pairs:
        messages += [_user(question), {"role": "assistant", "content": answer}]
    return messages


def _roles_and_contents(history: Any) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in history["messages"]]


def test_a_multi_turn_conversation_reaches_the_provider_whole_and_is_stored(
    service: Service, module_stub: ProviderStub
) -> None:
    module_stub.plan(
        json_reply(openai_body("Hello, Ada.")),
        json_reply(openai_body("You are Ada.", usage=(31, 4))),
        json_reply(openai_body("Goodbye, Ada.")),
    )
    seen = len(module_stub.requests)
    system = {"role": "system", "content": SYSTEM_PROMPT}
    ada, who = ("Hi, I am Ada.", "Hello, Ada."), ("Who am I?", "You are Ada.")
    bye = ("Bye.", "Goodbye, Ada.")

    with service.client() as http:
        first = service.expect(http.post("/chat/", json={"message": "Hi, I am Ada."}), 200)
        session_id = first["session_id"]
        assert first["response"] == "Hello, Ada."
        assert SESSION_ID.fullmatch(session_id)

        second = http.post("/chat", json={"session_id": session_id, "message": "Who am I?"})
        assert service.expect(second, 200) == {
            "session_id": session_id,
            "response": "You are Ada.",
            "usage": {"input_tokens": 31, "output_tokens": 4, "source": "provider"},
            "model": "primary",
        }
        padded = {"session_id": f"  {session_id}\t", "message": "Bye."}
        third = service.expect(http.post("/chat/", json=padded), 200)
        assert (third["session_id"], third["response"]) == (session_id, "Goodbye, Ada.")
        assert third["usage"]["source"] == "estimate"  # this answer counted nothing

        requests = module_stub.requests[seen:]
        assert [(r.method, r.path) for r in requests] == [("POST", "/v1/chat/completions")] * 3
        assert all(r.headers["authorization"] == "Bearer sk-conversation" for r in requests)
        assert [r.json["messages"] for r in requests] == [
            [system, _user("Hi, I am Ada.")],
            [system, *_turns(ada), _user("Who am I?")],
            [system, *_turns(ada, who), _user("Bye.")],
        ]
        settings = {
            (r.json["model"], r.json["temperature"], r.json["max_tokens"]) for r in requests
        }
        assert settings == {("e2e-model", 0.2, 64)}

        history = service.expect(http.get(f"/chat/{session_id}"), 200)
        assert history["session_id"] == session_id
        assert _roles_and_contents(history) == _turns(ada, who, bye)
        stamps = [m["created_at"] for m in history["messages"]]
        assert all(RFC_3339.fullmatch(stamp) for stamp in stamps), stamps
        times = [datetime.fromisoformat(stamp) for stamp in stamps]
        assert times == sorted(times)

        assert http.delete(f"/chat/{session_id}").status_code == 204
        gone = service.expect(http.get(f"/chat/{session_id}"), 404)
        assert isinstance(gone["detail"], str)
        assert session_id in gone["detail"]
        assert http.delete(f"/chat/{session_id}").status_code == 204  # deleting again is fine


def test_a_padded_session_id_is_stripped_on_read_and_delete(service: Service) -> None:
    with service.client() as http:
        service.expect(http.post("/chat", json={"session_id": "padded-1", "message": "hi"}), 200)
        history = service.expect(http.get("/chat/%20padded-1%20"), 200)
        assert history["session_id"] == "padded-1"
        assert len(history["messages"]) == 2
        assert http.delete("/chat/%20padded-1%20").status_code == 204
        service.expect(http.get("/chat/padded-1"), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"message": "no id"},
        {"session_id": None, "message": "null id"},
        {"session_id": "", "message": "empty id"},
        {"session_id": " \t ", "message": "blank id"},
    ],
    ids=["absent", "null", "empty", "blank"],
)
def test_no_session_id_starts_a_new_session(service: Service, body: dict[str, object]) -> None:
    with service.client() as http:
        ids = [service.expect(http.post("/chat/", json=body), 200)["session_id"] for _ in range(2)]
        assert ids[0] != ids[1]
        for session_id in ids:
            assert SESSION_ID.fullmatch(session_id), session_id
            history = service.expect(http.get(f"/chat/{session_id}"), 200)
            assert history["messages"][0]["content"] == body["message"]


def test_the_longest_valid_session_id_is_accepted(service: Service) -> None:
    session_id = "a.b_c:d-" * 16
    assert len(session_id) == 128
    with service.client() as http:
        reply = service.expect(
            http.post("/chat/", json={"session_id": session_id, "message": "x"}), 200
        )
        assert reply["session_id"] == session_id
        assert len(service.expect(http.get(f"/chat/{session_id}"), 200)["messages"]) == 2


def test_history_keeps_the_last_max_messages_and_the_model_sees_only_those(
    service: Service, module_stub: ProviderStub
) -> None:
    turns = 5  # 10 messages against a limit of 6
    module_stub.plan(*(json_reply(openai_body(f"answer {n}")) for n in range(turns)))
    seen = len(module_stub.requests)
    with service.client() as http:
        for n in range(turns):
            body = {"session_id": "trimmed", "message": f"question {n}"}
            service.expect(http.post("/chat/", json=body), 200)
        history = service.expect(http.get("/chat/trimmed"), 200)

    pairs = [(f"question {n}", f"answer {n}") for n in range(turns)]
    assert [{"role": m["role"], "content": m["content"]} for m in history["messages"]] == _turns(
        *pairs[-MAX_MESSAGES // 2 :]
    )
    last = module_stub.requests[seen:][-1].json["messages"]
    assert last == [
        {"role": "system", "content": SYSTEM_PROMPT},
        *_turns(*pairs[-1 - MAX_MESSAGES // 2 : -1]),
        {"role": "user", "content": f"question {turns - 1}"},
    ]


def test_the_openapi_document_describes_the_chat_routes(service: Service) -> None:
    with service.client() as http:
        document = service.expect(http.get("/schema/openapi.json"), 200)
    assert document["openapi"].startswith("3.")
    paths = {path.rstrip("/") for path in document["paths"]}
    assert {"/chat", "/chat/{session_id}", "/health", "/ready"} <= paths


def test_a_reasoning_model_gets_max_completion_tokens_and_no_temperature(
    module_launch: ServiceLauncher, module_stub: ProviderStub, module_redis: RedisServer
) -> None:
    """As config.ini spells it for OpenAI's o-series and GPT-5."""
    llm = openai_config(
        module_stub,
        model="gpt-5-mini",
        max_tokens="300",
        temperature="",
        max_tokens_parameter="max_completion_tokens",
    )
    service = module_launch({"redis": {"url": module_redis.url}, "llm": llm})
    module_stub.plan(json_reply(openai_body("Thought it through.")))
    seen = len(module_stub.requests)

    with service.client() as http:
        reply = service.expect(http.post("/chat/", json={"message": "Think."}), 200)

    assert reply["response"] == "Thought it through."
    (request,) = module_stub.requests[seen:]
    assert request.json["max_completion_tokens"] == 300
    assert "max_tokens" not in request.json
    assert "temperature" not in request.json
