"""Streamed replies from each provider, against the stub sending real byte chunks over loopback.

What the service relies on: the deltas join to the reply, whatever the chunking; the usage is
the provider's; a failure is retried only while no text has been handed on, and after that
ends the stream as ModelUnavailable (ModelTimeout for a silence); closing the stream hangs
up on the provider at once.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.llm.http_call import RetryPolicy
from adapters.llm.huggingface import HuggingFaceModel
from adapters.llm.provider_error import ProviderRefused
from adapters.llm.sse import SseEvent, SseReader
from application.errors import ModelTimeout, ModelUnavailable
from application.ports import LanguageModel
from domain.answer import Usage
from tests.integration.llm_samples import FAST, provider_model, sample_conversation
from tests.support.provider_stub import (
    ProviderStub,
    RecordedRequest,
    Reply,
    anthropic_error,
    anthropic_stream,
    anthropic_stream_error,
    error_reply,
    json_reply,
    openai_error,
    openai_stream,
    openai_stream_error,
    split_at,
    streamed,
    tgi_stream,
    tgi_stream_error,
)

SECRET = "sk-stream-test-0123456789abcdef"
QUICK_TIMEOUT = msgspec.structs.replace(FAST, timeout_seconds=0.3)
WORDS = ("Two", " plus", " two", " is", " four.")
TEXT = "".join(WORDS)
# What each stand-in counts for WORDS: OpenAI and Anthropic as sent, TGI its eos token too.
USAGE = {"openai": Usage(9, 5), "anthropic": Usage(21, 5), "huggingface": Usage(17, 6)}
PROVIDERS = ["openai", "anthropic", "huggingface"]


def _model(
    provider: str, client: httpx.AsyncBaseTransport, base_url: str, policy: RetryPolicy = FAST
) -> LanguageModel:
    return provider_model(provider, client, base_url, api_key=SECRET, policy=policy)


def _whole(provider: str, *deltas: str, usage: bool = True) -> bytes:
    """A whole stream of `deltas`, with the provider's counts when `usage`."""
    if provider == "openai":
        return openai_stream(*deltas, usage=(9, len(deltas)) if usage else None)
    if provider == "anthropic":
        return anthropic_stream(*deltas)
    return tgi_stream(*deltas, input_length=17 if usage else None)


def _opening(provider: str, *deltas: str) -> bytes:
    """The start of a stream: its opening events and these deltas, no end."""
    if provider == "openai":
        return openai_stream(*deltas, end=False)
    if provider == "anthropic":
        return anthropic_stream(*deltas, end=False)
    return tgi_stream(*deltas, end=False)


def _in_band_error(provider: str, *, retryable: bool) -> bytes:
    if provider == "openai":
        if retryable:
            return openai_stream_error("The server had an error while processing your request.")
        return openai_stream_error("Invalid 'messages'.", kind="invalid_request_error")
    if provider == "anthropic":
        if retryable:
            return anthropic_stream_error("overloaded_error", "Overloaded")
        return anthropic_stream_error("invalid_request_error", "prompt is too long")
    if retryable:
        return tgi_stream_error("Model is overloaded", "overloaded")
    return tgi_stream_error("Input validation error: inputs too long", "validation")


def _events(body: bytes) -> list[bytes]:
    """The body cut after each event: one piece per event, as a provider flushes them."""
    return [event + b"\n\n" for event in body.split(b"\n\n") if event]


async def _collect(stream: AsyncIterator[str | Usage]) -> tuple[list[str], list[Usage]]:
    deltas: list[str] = []
    usages: list[Usage] = []
    async for item in stream:
        if isinstance(item, Usage):
            usages.append(item)
        else:
            assert not usages, "usage comes after the text"
            deltas.append(item)
    return deltas, usages


async def _until(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the stub never saw the client go"
        await asyncio.sleep(0.01)


async def _read_into(items: list[str | Usage], stream: AsyncIterator[str | Usage]) -> None:
    """Read until the stream ends or fails, keeping what came before a failure."""
    async for item in stream:
        items.append(item)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# --- the wire format -------------------------------------------------------------------------


async def test_deltas_join_to_the_reply_and_the_usage_is_the_providers(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(streamed(_events(_whole(provider, *WORDS)), pause=0.01))
    model = _model(provider, provider_client, provider_stub.url)

    deltas, usages = await _collect(model.stream(sample_conversation()))

    assert deltas == list(WORDS)
    assert usages == [USAGE[provider]]
    assert len(provider_stub.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "huggingface"])
async def test_a_server_that_counts_nothing_gives_no_usage(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(streamed([_whole(provider, *WORDS, usage=False)]))
    model = _model(provider, provider_client, provider_stub.url)

    deltas, usages = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == TEXT
    assert usages == []


async def test_each_provider_is_asked_for_a_stream(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(streamed([_whole(provider, *WORDS)]))
    model = _model(provider, provider_client, provider_stub.url)

    await _collect(model.stream(sample_conversation()))

    [request] = provider_stub.requests
    assert request.headers["accept"] == "text/event-stream"
    sent = request.json
    if provider == "openai":
        assert request.path == "/chat/completions"
        assert sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}
    elif provider == "anthropic":
        assert request.path == "/v1/messages"
        assert sent["stream"] is True
    else:  # TGI's own streaming route takes the /generate body as it is
        assert request.path == "/generate_stream"
        assert "stream" not in sent
        assert sent["inputs"].endswith("[INST] What is 2+2? [/INST]")


async def test_a_hugging_face_model_url_is_asked_with_stream_true(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """The Inference API (and a TGI root URL) stream when the body says so."""
    path = "/models/mistralai/Mistral-7B-Instruct-v0.3"
    provider_stub.plan(streamed([tgi_stream(*WORDS)]))
    model = HuggingFaceModel(
        provider_client, url=provider_stub.url + path, api_key="hf_test", max_tokens=None,
        temperature=None, policy=FAST,
    )  # fmt: skip

    deltas, _ = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == TEXT
    [request] = provider_stub.requests
    assert request.path == path
    assert request.json["stream"] is True


async def test_hugging_face_skips_special_tokens_and_the_leading_space(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """As the whole reply is stripped, a streamed one starts at its first visible character."""
    provider_stub.plan(streamed([tgi_stream(" ", " Four", ".")]))
    model = _model("huggingface", provider_client, provider_stub.url)

    deltas, _ = await _collect(model.stream(sample_conversation()))

    assert deltas == ["Four", "."]


async def test_anthropic_skips_event_types_it_does_not_know(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """Anthropic's versioning policy may add event types; thinking and tool input are not text."""
    unknown = (
        b'event: content_block_stop_v2\ndata: {"type":"content_block_stop_v2","delta":"x"}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
        b'"delta":{"type":"input_json_delta","partial_json":"{\\"a\\": 1"}}\n\n'
    )
    body = anthropic_stream("Two", end=False) + unknown + anthropic_stream(" plus", start=False)
    provider_stub.plan(streamed([body]))
    model = _model("anthropic", provider_client, provider_stub.url)

    deltas, usages = await _collect(model.stream(sample_conversation()))

    assert deltas == ["Two", " plus"]
    assert usages == [Usage(21, 1)]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
async def test_chunks_split_mid_line_and_mid_character_give_the_same_text(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    line_end: bytes,
) -> None:
    words = ("Grüße", " ☕", " 𝄞 ", "naïve", " 日本語")
    body = _whole(provider, *words).replace(b"\n", line_end)
    # Cut inside every multi-byte character, and inside the line around it.
    offsets = set()
    for word in words:
        encoded = word.encode()
        at = body.index(encoded)
        for index, char in enumerate(word):
            width = len(char.encode())
            if width > 1:
                start = at + len(word[:index].encode())
                offsets.update({start + 1, start + width - 1, start - 3})
    pieces = split_at(body, *offsets)
    assert any(len(piece) < 4 for piece in pieces)
    provider_stub.plan(streamed(pieces, pause=0.003))
    model = _model(provider, provider_client, provider_stub.url)

    deltas, usages = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == "".join(words)
    assert len(usages) == 1


# --- failures before the first delta: retried as a whole answer's are -----------------------


async def test_a_429_before_the_first_delta_is_retried(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(error_reply(429, retry_after="0"), streamed([_whole(provider, *WORDS)]))
    model = _model(provider, provider_client, provider_stub.url)

    deltas, _ = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == TEXT
    assert len(provider_stub.requests) == 2


async def test_a_refusal_is_in_the_providers_words_and_not_retried(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    if provider == "anthropic":
        refusal = anthropic_error(400, "invalid_request_error", "max_tokens: field required")
    else:
        refusal = openai_error(400, "max_tokens: field required")
    provider_stub.plan(refusal, streamed([_whole(provider, *WORDS)]))
    model = _model(provider, provider_client, provider_stub.url)

    with pytest.raises(ProviderRefused, match=r"HTTP 400.*max_tokens: field required") as caught:
        await _collect(model.stream(sample_conversation()))

    assert caught.value.status == 400
    assert len(provider_stub.requests) == 1


async def test_when_retries_run_out_the_last_failure_is_reported(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.default = error_reply(503)
    model = _model(provider, provider_client, provider_stub.url)

    with pytest.raises(ModelUnavailable, match="HTTP 503") as caught:
        await _collect(model.stream(sample_conversation()))

    assert not isinstance(caught.value, ModelTimeout)
    assert len(provider_stub.requests) == FAST.max_retries + 1


async def test_an_overloaded_error_in_the_stream_before_the_first_delta_is_retried(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """Anthropic and TGI report overload inside a 200 stream, after its opening events."""
    failed = _opening(provider) + _in_band_error(provider, retryable=True)
    provider_stub.plan(streamed([failed]), streamed([_whole(provider, *WORDS)]))
    model = _model(provider, provider_client, provider_stub.url)

    deltas, _ = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == TEXT
    assert len(provider_stub.requests) == 2


async def test_a_final_error_in_the_stream_before_the_first_delta_is_not_retried(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    failed = _opening(provider) + _in_band_error(provider, retryable=False)
    provider_stub.plan(streamed([failed]), streamed([_whole(provider, *WORDS)]))
    model = _model(provider, provider_client, provider_stub.url)

    with pytest.raises(ModelUnavailable, match="reported an error in its stream") as caught:
        await _collect(model.stream(sample_conversation()))

    said = {"openai": "Invalid 'messages'", "anthropic": "prompt is too long"}
    assert said.get(provider, "Input validation error") in str(caught.value)
    assert len(provider_stub.requests) == 1


async def test_a_connection_reset_before_the_first_delta_is_retried(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(
        streamed([_opening(provider)], ending="reset"), streamed([_whole(provider, *WORDS)])
    )
    model = _model(provider, provider_client, provider_stub.url)

    deltas, _ = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == TEXT
    assert len(provider_stub.requests) == 2


@pytest.mark.parametrize("deltas", [(), (" ", "\n")], ids=["no-text", "blank"])
async def test_a_stream_without_text_is_an_empty_reply(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    deltas: tuple[str, ...],
) -> None:
    provider_stub.plan(streamed([_whole(provider, *deltas)]))
    model = _model(provider, provider_client, provider_stub.url)

    with pytest.raises(ModelUnavailable, match="empty reply"):
        await _collect(model.stream(sample_conversation()))

    assert len(provider_stub.requests) == 1


async def test_a_stream_that_is_not_json_is_unusable_and_not_retried(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(streamed([b"data: <html>Bad gateway</html>\n\n"]))
    model = _model(provider, provider_client, provider_stub.url)

    with pytest.raises(ModelUnavailable, match="unusable"):
        await _collect(model.stream(sample_conversation()))

    assert len(provider_stub.requests) == 1


async def test_a_whole_json_answer_to_a_stream_request_is_unusable(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """The Inference API answers a model it cannot stream for with the whole answer."""
    provider_stub.plan(json_reply([{"generated_text": TEXT}]))
    model = HuggingFaceModel(
        provider_client, url=provider_stub.url + "/models/gpt2", api_key="hf_test",
        max_tokens=None, temperature=None, policy=FAST,
    )  # fmt: skip

    with pytest.raises(ModelUnavailable, match="answered JSON, not the stream asked for"):
        await _collect(model.stream(sample_conversation()))

    assert len(provider_stub.requests) == 1


# --- failures after the first delta: never retried ------------------------------------------


async def test_an_error_in_the_stream_after_the_first_delta_ends_it_without_retry(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    failed = [_opening(provider, "Two"), _in_band_error(provider, retryable=True)]
    provider_stub.plan(streamed(failed, pause=0.02), streamed([_whole(provider, *WORDS)]))
    model = _model(provider, provider_client, provider_stub.url)
    deltas: list[str | Usage] = []

    with pytest.raises(ModelUnavailable, match="reported an error in its stream") as caught:
        await _read_into(deltas, model.stream(sample_conversation()))

    assert deltas == ["Two"]
    assert not isinstance(caught.value, ModelTimeout)
    assert len(provider_stub.requests) == 1


async def test_a_connection_reset_after_the_first_delta_is_unavailable(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(
        streamed([_opening(provider, "Two", " plus")], ending="reset"),
        streamed([_whole(provider, *WORDS)]),
    )
    model = _model(provider, provider_client, provider_stub.url)
    deltas: list[str | Usage] = []

    with pytest.raises(ModelUnavailable, match="broke off its reply") as caught:
        await _read_into(deltas, model.stream(sample_conversation()))

    assert deltas == ["Two", " plus"]
    assert not isinstance(caught.value, ModelTimeout)
    assert len(provider_stub.requests) == 1


async def test_a_stall_after_the_first_delta_times_out_and_hangs_up(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(streamed([_opening(provider, "Two")], ending="stall"))
    model = _model(provider, provider_client, provider_stub.url, QUICK_TIMEOUT)
    deltas: list[str | Usage] = []

    started = time.monotonic()
    with pytest.raises(ModelTimeout, match=r"sent nothing for 0\.3 seconds"):
        await _read_into(deltas, model.stream(sample_conversation()))

    assert deltas == ["Two"]
    assert time.monotonic() - started < 1.0
    assert len(provider_stub.requests) == 1
    await _until(lambda: len(provider_stub.abandoned) == 1)
    assert provider_stub.abandoned[0].phase == "during-body"


async def test_the_timeout_bounds_each_silence_not_the_whole_reply(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """A long reply written steadily takes longer than timeout_seconds, and that is fine."""
    pieces = _events(_whole(provider, *WORDS))
    provider_stub.plan(streamed(pieces, pause=0.1))
    model = _model(provider, provider_client, provider_stub.url, QUICK_TIMEOUT)

    started = time.monotonic()
    deltas, _ = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == TEXT
    assert time.monotonic() - started > QUICK_TIMEOUT.timeout_seconds


async def test_an_error_in_the_stream_names_no_key(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    echoed = f"Incorrect API key provided: {SECRET}"
    error = {
        "openai": openai_stream_error(echoed, kind="invalid_request_error"),
        "anthropic": anthropic_stream_error("authentication_error", echoed),
        "huggingface": tgi_stream_error(echoed, "validation"),
    }[provider]
    provider_stub.plan(streamed([_opening(provider) + error]))
    model = _model(provider, provider_client, provider_stub.url)

    with pytest.raises(ModelUnavailable, match="Incorrect API key provided") as caught:
        await _collect(model.stream(sample_conversation()))

    assert SECRET not in str(caught.value)


# --- closing the stream ----------------------------------------------------------------------


async def test_closing_the_stream_hangs_up_on_the_provider_at_once(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(streamed(_events(_whole(provider, *WORDS)), pause=0.2))
    model = _model(provider, provider_client, provider_stub.url)
    stream = model.stream(sample_conversation())

    assert isinstance(stream, AsyncGenerator)

    first = await anext(stream)
    closed = time.monotonic()
    await stream.aclose()

    assert first == "Two"
    await _until(lambda: len(provider_stub.abandoned) == 1)
    assert provider_stub.abandoned[0].phase == "during-body"
    assert provider_stub.abandoned[0].closed_at - closed < 0.25


async def test_cancelling_the_reader_hangs_up_on_the_provider(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(streamed(_events(_whole(provider, *WORDS)), pause=0.2))
    model = _model(provider, provider_client, provider_stub.url)
    got: list[str | Usage] = []

    async def read() -> None:
        async for item in model.stream(sample_conversation()):
            got.append(item)

    reader = asyncio.create_task(read())
    await _until(lambda: bool(got))
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader

    await _until(lambda: len(provider_stub.abandoned) == 1)
    assert got == ["Two"]


# --- OpenAI-compatible servers that refuse stream_options ------------------------------------


def _refuses_stream_options(request: RecordedRequest) -> Reply:
    """Azure before 2024-09 and some compatible servers."""
    if "stream_options" in request.json:
        return openai_error(400, "Unrecognized request argument supplied: stream_options")
    return streamed([openai_stream(*WORDS)])


async def test_a_server_refusing_stream_options_is_asked_again_without_them_from_then_on(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.default = _refuses_stream_options
    model = _model("openai", provider_client, provider_stub.url)

    first, first_usage = await _collect(model.stream(sample_conversation()))
    second, _ = await _collect(model.stream(sample_conversation()))

    assert "".join(first) == "".join(second) == TEXT
    assert first_usage == []
    assert ["stream_options" in r.json for r in provider_stub.requests] == [True, False, False]


async def test_a_refused_max_tokens_is_learnt_while_streaming_too(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    def reasoning(request: RecordedRequest) -> Reply:
        if "max_tokens" in request.json:
            return openai_error(
                400, "Unsupported parameter: 'max_tokens' is not supported with this model.",
                param="max_tokens", code="unsupported_parameter",
            )  # fmt: skip
        return streamed([openai_stream(*WORDS, usage=(9, 5))])

    provider_stub.default = reasoning
    model = _model("openai", provider_client, provider_stub.url)

    deltas, usages = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == TEXT
    assert usages == [Usage(9, 5)]
    assert [r.json.get("max_completion_tokens") for r in provider_stub.requests] == [None, 32]


# --- properties: any chunking gives the same text --------------------------------------------

ci = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BODIES = {
    "openai": openai_stream("Grüße", " ☕ ", "日本", "\n", "ok", usage=(9, 5)),
    "anthropic": anthropic_stream("Grüße", " ☕ ", "日本", "\n", "ok"),
    "huggingface": tgi_stream("Grüße", " ☕ ", "日本", "\n", "ok", input_length=17),
}


def _cuts(size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(1, size - 1), max_size=12, unique=True)


@ci
@given(cuts=_cuts(len(BODIES["anthropic"])), crlf=st.booleans())
def test_the_sse_reader_reads_the_same_events_however_the_bytes_are_cut(
    cuts: list[int], crlf: bool
) -> None:
    body = BODIES["anthropic"].replace(b"\n", b"\r\n") if crlf else BODIES["anthropic"]
    whole = SseReader(len(body))
    expected = whole.feed(body) + whole.end()
    reader = SseReader(len(body))
    events: list[SseEvent] = []
    for piece in split_at(body, *cuts):
        events += reader.feed(piece)
    events += reader.end()

    assert events == expected
    assert len(events) == 11
    assert events[0].name == "message_start"


@ci
@given(data=st.data())
async def test_any_chunking_over_the_network_gives_the_same_deltas_joined(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    data: st.DataObject,
) -> None:
    body = BODIES[provider]
    cuts = data.draw(_cuts(len(body)), label="cuts")
    provider_stub.reset()
    provider_stub.plan(streamed(split_at(body, *cuts), pause=0.001))
    model = _model(provider, provider_client, provider_stub.url)

    deltas, usages = await _collect(model.stream(sample_conversation()))

    assert "".join(deltas) == "Grüße ☕ 日本\nok"
    assert len(usages) == 1
    assert len(provider_stub.requests) == 1
