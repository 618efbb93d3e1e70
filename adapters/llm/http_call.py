"""A provider's HTTP endpoint over the shared transport: deadlines, bounded bodies, retries,
and what the provider said when it refused, for a whole answer and for a streamed one."""

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Iterator
from typing import TypeVar, cast

import httpx
import msgspec

from adapters.llm.provider_error import (
    ContextCounts,
    ProviderRefused,
    context_length,
    read_refusal,
    refused,
)
from adapters.llm.sse import SseEvent, SseReader, SseTooLong
from adapters.request_context import REQUEST_ID
from application.errors import ContextTooLong, ModelTimeout, ModelUnavailable
from domain.answer import Usage

log = logging.getLogger(__name__)

T = TypeVar("T")

# An error body only explains a status already known: read a little of it, briefly.
ERROR_BODY_BYTES = 16 * 1024
ERROR_BODY_SECONDS = 1.0

# What an adapter makes of a provider's events: text deltas, and Usage if the provider counts.
EventParser = Callable[[AsyncIterator[SseEvent]], AsyncGenerator[str | Usage, None]]


def no_retry_hook() -> None:
    return None


class RetryPolicy(msgspec.Struct, frozen=True):
    max_retries: int = 2
    timeout_seconds: float = 60.0
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    retry_after_cap: float = 30.0
    max_response_bytes: int = 4 * 1024 * 1024


class ReportedInStream(ModelUnavailable):
    """An error the provider wrote inside its 200 stream. `retryable` when its type means
    overloaded, rate-limited or a server fault: another attempt may fare better, as long as
    no text has reached the caller."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ReportedContext(ReportedInStream, ContextTooLong):
    """An error inside the stream saying the prompt and max_tokens exceed the window (TGI
    reports its validation errors so): never retried as it is, whatever its type."""

    def __init__(self, message: str, counts: ContextCounts) -> None:
        super().__init__(message, retryable=False)
        self.input_tokens, self.limit_tokens = counts


class _Again(Exception):
    """An attempt that failed in a way worth another: the failure to report if none is left,
    and the provider's Retry-After, if it sent one."""

    def __init__(self, failure: ModelUnavailable, retry_after: float | None = None) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.retry_after = retry_after


class ProviderEndpoint:
    """One configured provider: where (URL, headers; a streamed answer may have a URL of its
    own), how patiently (retry policy), over the process's shared transport, and what its
    failures name (provider label, configured model). The configured key is the secret
    removed from whatever the provider says; `on_retry` is told of each retry (a metric).
    Each request carries the X-Request-ID of the client request it serves, so the
    provider's logs can be matched with the service's."""

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
        on_retry: Callable[[], None] = no_retry_hook,
        stream_url: str | None = None,
    ) -> None:
        self._transport = transport
        self._url = url
        self._stream_url = stream_url or url
        # Parsed once, not per request: httpx.Request re-parses a str URL and a dict of headers.
        self._urls = {url: httpx.URL(url), self._stream_url: httpx.URL(self._stream_url)}
        self._headers = httpx.Headers({"content-type": "application/json", **headers})
        self._stream_headers = httpx.Headers({**self._headers, "accept": "text/event-stream"})
        self._policy = policy
        self._provider = provider
        self._model = model
        self._secret = secret
        self._on_retry = on_retry

    async def post(self, body: bytes) -> bytes:
        """POST and return the 2xx body.

        429, 5xx and connection failures are retried up to policy.max_retries times with
        jittered exponential backoff, or after Retry-After (capped); other statuses are final.
        Either way an error status ends as ProviderRefused, in the provider's own words, of
        the subclass `refused` picks (ContextTooLong or ModelRejected for a 4xx).
        Each attempt has a total deadline, so a trickling body cannot hold a request forever,
        and a timeout is final: retrying it would multiply the user's wait. The request goes
        straight to the transport: httpx.AsyncClient's cookie, auth, redirect and URL-merging
        steps are nothing a provider call needs.
        """
        attempt = 0
        while True:
            try:
                return await self._post_once(body)
            except _Again as again:
                await self._before_retry(again, attempt)
            attempt += 1

    async def stream(self, body: bytes, parse: EventParser) -> AsyncGenerator[str | Usage, None]:
        """POST to the stream URL and relay what `parse` makes of the provider's events:
        non-empty text deltas, then the last Usage it gave, once. Text that is only
        whitespace is held back until visible text follows it.

        Until the first delta is yielded, failures are handled as by `post` (error statuses
        end as ProviderRefused; 429, 5xx, connection failures and retryable ReportedInStream
        are retried; unusable data, timeouts and ReportedContext are final), and a stream
        that ends without text is ModelUnavailable. After it nothing is retried: the caller
        has shown the text. Before the headers the attempt's deadline is
        policy.timeout_seconds; after them the same figure bounds each silence between
        chunks, not the whole reply, which may take minutes. Closing the iterator closes the
        provider's response at once.
        """
        attempt = 0
        while True:
            items = self._stream_once(body, parse)
            try:
                async with contextlib.aclosing(items):
                    async for item in items:
                        yield item
                return
            except _Again as again:
                await self._before_retry(again, attempt)
            attempt += 1

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

    def reported(self, data: bytes, retryable: Collection[str]) -> ReportedInStream:
        """The error event `data` (any provider's error JSON) as the failure to raise, its
        message key-free: ReportedContext when it says context length; otherwise retryable
        when its type or code is among `retryable`."""
        said = read_refusal(data, "application/json", self._secret)
        kind = said.kind or said.code
        named = f" ({kind})" if kind else ""
        message = f"{self._provider} reported an error in its stream{named}: {said.message}"
        counts = context_length(said)
        if counts is not None:
            return ReportedContext(message, counts)
        return ReportedInStream(message, retryable=bool({said.kind, said.code} & set(retryable)))

    async def _before_retry(self, again: _Again, attempt: int) -> None:
        """Wait before the next attempt, or raise the failure when none is left."""
        retries = self._policy.max_retries
        if attempt >= retries:
            raise again.failure from again.failure.__cause__
        delay = _backoff(self._policy, attempt, again.retry_after)
        log.warning("%s; retry %d of %d in %.2fs", again.failure, attempt + 1, retries, delay)
        self._on_retry()
        await asyncio.sleep(delay)

    async def _post_once(self, body: bytes) -> bytes:
        with self._faults(reading=False):
            async with asyncio.timeout(self._policy.timeout_seconds):
                response = await self._send(self._url, body)
                try:
                    if not 200 <= response.status_code < 300:
                        raise await self._refusal(response, self._url)
                    limit = self._policy.max_response_bytes
                    return await _read_capped(response, limit, self._provider)
                finally:
                    await response.aclose()

    async def _stream_once(
        self, body: bytes, parse: EventParser
    ) -> AsyncGenerator[str | Usage, None]:
        with self._faults(reading=False):
            async with asyncio.timeout(self._policy.timeout_seconds):
                response = await self._send(self._stream_url, body, stream=True)
                if not 200 <= response.status_code < 300:
                    try:
                        raise await self._refusal(response, self._stream_url)
                    finally:
                        await response.aclose()
        if "json" in response.headers.get("content-type", ""):
            # e.g. the Inference API serving a model without streaming: a whole answer
            await response.aclose()
            raise ModelUnavailable(f"{self._provider} answered JSON, not the stream asked for")
        events = self._events(response)
        items = parse(events)
        shown = False  # a delta has been yielded: from here on, no retry
        held = ""
        usage: Usage | None = None
        try:
            async with contextlib.aclosing(events), contextlib.aclosing(items):
                async for item in items:
                    if isinstance(item, Usage):
                        usage = item
                    elif shown or item.strip():
                        shown = True
                        yield held + item
                        held = ""
                    else:
                        held += item
        except _Again as again:  # the connection broke
            if shown:
                raise again.failure from again.failure.__cause__
            raise
        except ReportedInStream as error:
            if error.retryable and not shown:
                raise _Again(error) from error
            raise
        finally:
            await response.aclose()
        if not shown:
            raise ModelUnavailable(f"{self._provider} answered with an empty reply")
        if usage is not None:
            yield usage

    async def _events(self, response: httpx.Response) -> AsyncGenerator[SseEvent, None]:
        """The response's events as their bytes arrive, each wait for bytes bounded."""
        reader = SseReader(self._policy.max_response_bytes)
        chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
        silence = _Silence(self._policy.timeout_seconds)
        async with contextlib.aclosing(chunks):
            try:
                while True:
                    with self._faults(reading=True), silence.bounded():
                        chunk = await anext(chunks, None)
                    try:
                        events = reader.feed(chunk) if chunk is not None else reader.end()
                    except SseTooLong as error:
                        raise ModelUnavailable(f"{self._provider} answered with {error}") from error
                    for event in events:
                        yield event
                    if chunk is None:
                        return
            finally:
                silence.close()

    async def _send(self, url: str, body: bytes, *, stream: bool = False) -> httpx.Response:
        request = httpx.Request(
            "POST",
            self._urls[url],
            content=body,
            headers=self._stream_headers if stream else self._headers,
        )
        if (request_id := REQUEST_ID.get()) is not None:
            request.headers["x-request-id"] = request_id
        return await self._transport.handle_async_request(request)

    async def _refusal(self, response: httpx.Response, url: str) -> ProviderRefused | _Again:
        """The error status as the provider worded it; worth another attempt when 429 or 5xx
        (never a ContextTooLong, which only a 4xx is)."""
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        said = read_refusal(await _error_body(response), content_type, self._secret)
        refusal = refused(status, said, provider=self._provider, model=self._model, url=url)
        if status == 429 or status >= 500:
            return _Again(refusal, _retry_after(response))
        return refusal

    @contextlib.contextmanager
    def _faults(self, *, reading: bool) -> Iterator[None]:
        """httpx's failures as a use case knows them. `reading`: the stream had begun, so a
        timeout is a silence, and a broken connection broke off the reply."""
        try:
            yield
        except (TimeoutError, httpx.TimeoutException) as error:
            seconds = f"{self._policy.timeout_seconds:g} seconds"
            what = f"sent nothing for {seconds}" if reading else f"did not answer within {seconds}"
            raise ModelTimeout(f"{self._provider} {what}") from error
        except httpx.TransportError as error:
            name = type(error).__name__
            failure = ModelUnavailable(
                f"{self._provider} broke off its reply ({name})"
                if reading
                else f"could not reach {self._provider} ({name})"
            )
            failure.__cause__ = error
            raise _Again(failure) from error
        except httpx.HTTPError as error:  # e.g. a body that does not match its Content-Encoding
            raise ModelUnavailable(
                f"{self._provider} answered something unreadable ({type(error).__name__})"
            ) from error


class _Silence:
    """Bounds each wait for the next chunk of a stream by `seconds`, with one timer for the
    whole stream that re-arms itself from the last chunk's time, where asyncio.timeout
    around each wait would schedule and cancel a timer for every token."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._last = self._loop.time()
        self._waiting = False
        self._fired = False
        self._timer = self._loop.call_at(self._last + seconds, self._check)

    def _check(self) -> None:
        due = self._last + self._seconds
        if self._waiting and self._loop.time() >= due:
            self._fired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(max(due, self._loop.time() + 0.01), self._check)

    @contextlib.contextmanager
    def bounded(self) -> Iterator[None]:
        """Around one wait: TimeoutError if it lasts `seconds` after the last chunk."""
        self._waiting = True
        try:
            yield
        except asyncio.CancelledError:
            if not self._fired:
                raise
            self._fired = False
            self._task.uncancel()
            raise TimeoutError from None
        finally:
            self._waiting = False
            self._last = self._loop.time()

    def close(self) -> None:
        self._timer.cancel()


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
