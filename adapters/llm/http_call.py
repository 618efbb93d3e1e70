"""A provider's HTTP endpoint over the shared transport: deadline, bounded body, retries, and
what the provider said when it refused."""

import asyncio
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import TypeVar

import httpx
import msgspec

from adapters.llm.provider_error import ProviderRefused, read_refusal
from application.errors import ModelTimeout, ModelUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# An error body only explains a status already known: read a little of it, briefly.
ERROR_BODY_BYTES = 16 * 1024
ERROR_BODY_SECONDS = 1.0


class RetryPolicy(msgspec.Struct, frozen=True):
    max_retries: int = 2
    timeout_seconds: float = 60.0
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    retry_after_cap: float = 30.0
    max_response_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Retry:
    """An attempt that failed in a way worth another: the failure to report if none is left,
    and how long to wait before the next."""

    failure: ModelUnavailable
    delay: float


class ProviderEndpoint:
    """One configured provider: where (URL, headers), how patiently (retry policy), over the
    process's shared transport, and what its failures name (provider label, configured model).
    The configured key is the secret removed from whatever the provider says.

    A streaming call would share `_attempt`'s deadline and refusal handling."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        url: str,
        headers: dict[str, str],
        policy: RetryPolicy,
        provider: str,
        model: str,
        secret: str,
    ) -> None:
        self._transport = transport
        self._url = url
        self._headers = {"content-type": "application/json", **headers}
        self._policy = policy
        self._provider = provider
        self._model = model
        self._secret = secret

    async def post(self, body: bytes) -> bytes:
        """POST and return the 2xx body.

        429, 5xx and connection failures are retried up to policy.max_retries times with
        jittered exponential backoff, or after Retry-After (capped); other statuses are final.
        Either way an error status ends as ProviderRefused, in the provider's own words.
        Each attempt has a total deadline, so a trickling body cannot hold a request forever,
        and a timeout is final: retrying it would multiply the user's wait. The request goes
        straight to the transport: httpx.AsyncClient's cookie, auth, redirect and URL-merging
        steps are nothing a provider call needs.
        """
        retries = self._policy.max_retries
        for attempt in range(retries):
            outcome = await self._attempt(body, attempt)
            if not isinstance(outcome, _Retry):
                return outcome
            log.warning(
                "%s; retry %d of %d in %.2fs", outcome.failure, attempt + 1, retries, outcome.delay
            )
            await asyncio.sleep(outcome.delay)
        last = await self._attempt(body, retries)
        if isinstance(last, _Retry):
            raise last.failure
        return last

    def decode(self, decoder: msgspec.json.Decoder[T], body: bytes) -> T:
        try:
            return decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
            raise ModelUnavailable(
                f"{self._provider} answered something unusable: {error}"
            ) from error

    def usable_text(self, text: str | None) -> str:
        if not text or not text.strip():
            raise ModelUnavailable(f"{self._provider} answered with an empty reply")
        return text

    async def _attempt(self, body: bytes, attempt: int) -> bytes | _Retry:
        request = httpx.Request("POST", self._url, content=body, headers=self._headers)
        try:
            async with asyncio.timeout(self._policy.timeout_seconds):
                response = await self._transport.handle_async_request(request)
                try:
                    return await self._outcome(response, attempt)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as error:
            raise ModelTimeout(
                f"{self._provider} did not answer within {self._policy.timeout_seconds:g} seconds"
            ) from error
        except httpx.TransportError as error:
            failure = ModelUnavailable(f"could not reach {self._provider} ({type(error).__name__})")
            failure.__cause__ = error
            return _Retry(failure, _backoff(self._policy, attempt, None))
        except httpx.HTTPError as error:  # e.g. a body that does not match its Content-Encoding
            raise ModelUnavailable(
                f"{self._provider} answered something unreadable ({type(error).__name__})"
            ) from error

    async def _outcome(self, response: httpx.Response, attempt: int) -> bytes | _Retry:
        status = response.status_code
        if 200 <= status < 300:
            return await _read_capped(response, self._policy.max_response_bytes, self._provider)
        content_type = response.headers.get("content-type", "")
        said = read_refusal(await _error_body(response), content_type, self._secret)
        refusal = ProviderRefused(
            status, said, provider=self._provider, model=self._model, url=self._url
        )
        if status == 429 or status >= 500:
            return _Retry(refusal, _backoff(self._policy, attempt, _retry_after(response)))
        raise refusal


def bearer(api_key: str) -> dict[str, str]:
    """The Authorization header, or none for a local server that runs without a key."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff(policy: RetryPolicy, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, policy.retry_after_cap)
    return random.uniform(0, min(policy.backoff_cap, policy.backoff_base * 2**attempt))


async def _read_capped(response: httpx.Response, limit: int, provider: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ModelUnavailable(f"{provider} answered with a body over {limit} bytes")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise ModelUnavailable(f"{provider} answered with a body over {limit} bytes")
    return bytes(body)


async def _error_body(response: httpx.Response) -> bytes:
    """The start of an error answer. A body that is slow, cut off or undecodable gives what
    arrived of it; the attempt's own deadline still bounds the whole."""
    body = bytearray()
    try:
        async with asyncio.timeout(ERROR_BODY_SECONDS):
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= ERROR_BODY_BYTES:
                    break
    except (TimeoutError, httpx.HTTPError):
        pass  # TimeoutError here is this read's own limit; the attempt's deadline passes through
    return bytes(body[:ERROR_BODY_BYTES])
