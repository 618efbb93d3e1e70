"""Provider calls go through the proxy the environment names, as httpx's client did."""

import httpx
import pytest

from adapters.llm.aiohttp_transport import AiohttpTransport
from tests.support.provider_stub import ProviderStub, json_reply

PROVIDER = "http://provider.invalid/v1/chat/completions"


async def test_a_provider_call_goes_through_http_proxy(
    provider_stub: ProviderStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", provider_stub.url)  # the stand-in plays the proxy
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    provider_stub.plan(json_reply({"ok": True}), json_reply({"ok": True}))
    transport = AiohttpTransport(max_connections=4)
    try:
        for _ in range(2):
            response = await transport.handle_async_request(httpx.Request("POST", PROVIDER))
            await response.aread()
    finally:
        await transport.aclose()

    assert [r.path for r in provider_stub.requests] == [PROVIDER, PROVIDER]


async def test_no_proxy_exempts_a_host(
    provider_stub: ProviderStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    provider_stub.plan(json_reply({"ok": True}))
    transport = AiohttpTransport(max_connections=4)
    try:
        url = f"{provider_stub.url}/v1/chat/completions"
        response = await transport.handle_async_request(httpx.Request("POST", url))
        await response.aread()
    finally:
        await transport.aclose()

    assert response.status_code == 200
    assert [r.path for r in provider_stub.requests] == ["/v1/chat/completions"]
