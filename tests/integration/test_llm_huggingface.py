"""Hugging Face text generation, against the stub provider over loopback."""

import httpx
import pytest

from adapters.llm.huggingface import HuggingFaceModel
from application.errors import ModelUnavailable
from domain.answer import Answer, Usage
from tests.integration.llm_samples import FAST, sample_conversation
from tests.support.provider_stub import ProviderStub, huggingface_body, json_reply

MODEL_PATH = "/models/mistralai/Mistral-7B-Instruct-v0.3"
PROMPT = "<s>[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] What is 2+2? [/INST]"


def _model(
    client: httpx.AsyncBaseTransport,
    url: str,
    *,
    api_key: str = "hf_test_secret",
    max_tokens: int | None = 64,
    temperature: float | None = 0.7,
) -> HuggingFaceModel:
    return HuggingFaceModel(
        client, url=url, api_key=api_key, max_tokens=max_tokens, temperature=temperature,
        policy=FAST,
    )  # fmt: skip


async def test_sends_the_mistral_prompt_and_returns_the_generated_text(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(huggingface_body(" 4")))
    model = _model(provider_client, provider_stub.url + MODEL_PATH)

    assert await model.reply(sample_conversation()) == Answer("4")

    [request] = provider_stub.requests
    assert request.method == "POST"
    assert request.path == MODEL_PATH
    assert request.headers["authorization"] == "Bearer hf_test_secret"
    assert request.headers["content-type"] == "application/json"
    assert request.json["inputs"] == PROMPT
    parameters = dict(request.json["parameters"])
    parameters.pop("return_full_text", None)  # its own test below, while the adapter drops it
    assert parameters == {"max_new_tokens": 64, "temperature": 0.7, "do_sample": True}
    assert request.json.keys() == {"inputs", "parameters"}


async def test_asks_for_the_generated_text_only(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(huggingface_body("4")))
    model = _model(provider_client, provider_stub.url + MODEL_PATH)

    await model.reply(sample_conversation())

    assert provider_stub.requests[0].json["parameters"].get("return_full_text") is False


async def test_temperature_zero_asks_for_greedy_decoding(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """TGI rejects temperature 0."""
    provider_stub.plan(json_reply(huggingface_body("4")))
    model = _model(provider_client, provider_stub.url + "/generate", temperature=0.0)

    await model.reply(sample_conversation())

    [request] = provider_stub.requests
    assert request.path == "/generate"
    assert request.json["parameters"]["do_sample"] is False
    assert "temperature" not in request.json["parameters"]


async def test_none_for_max_tokens_and_temperature_leaves_both_to_the_server(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(huggingface_body("4")))
    model = _model(
        provider_client, provider_stub.url + "/generate", max_tokens=None, temperature=None
    )

    await model.reply(sample_conversation())

    assert provider_stub.requests[0].json["parameters"] == {"return_full_text": False}


async def test_a_local_server_needs_no_key(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(huggingface_body("4")))
    model = _model(provider_client, provider_stub.url + "/generate", api_key="")

    await model.reply(sample_conversation())

    assert "authorization" not in provider_stub.requests[0].headers


@pytest.mark.parametrize("as_list", [True, False], ids=["inference-api-list", "tgi-object"])
async def test_reads_both_answer_shapes(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, as_list: bool
) -> None:
    provider_stub.plan(json_reply(huggingface_body("Four.", as_list=as_list)))
    model = _model(provider_client, provider_stub.url + MODEL_PATH)

    assert await model.reply(sample_conversation()) == Answer("Four.")


async def test_a_server_that_echoes_the_prompt_still_yields_only_the_answer(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(huggingface_body(PROMPT + " Four.")))
    model = _model(provider_client, provider_stub.url + MODEL_PATH)

    assert await model.reply(sample_conversation()) == Answer("Four.")


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"error": "Model is currently loading", "estimated_time": 20.0},
        [{"generated_text": None}],
        {"generated_text": PROMPT},
        "4",
    ],
    ids=["empty-list", "error-object", "null-text", "prompt-only", "bare-string"],
)
async def test_an_answer_without_text_is_model_unavailable(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, payload: object
) -> None:
    provider_stub.plan(json_reply(payload))
    model = _model(provider_client, provider_stub.url + MODEL_PATH)

    with pytest.raises(ModelUnavailable, match="huggingface provider"):
        await model.reply(sample_conversation())
    assert len(provider_stub.requests) == 1


async def test_the_answer_counts_tokens_only_when_the_server_counts_both(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """TGI's details count the generated tokens; the prompt's only in some versions."""
    generated = {"finish_reason": "eos_token", "generated_tokens": 3, "seed": None}
    provider_stub.plan(
        json_reply({"generated_text": "Four.", "details": generated}),
        json_reply({"generated_text": "Four.", "details": {**generated, "input_length": 19}}),
    )
    model = _model(provider_client, provider_stub.url + "/generate")

    assert await model.reply(sample_conversation()) == Answer("Four.")
    assert await model.reply(sample_conversation()) == Answer("Four.", Usage(19, 3, "provider"))
