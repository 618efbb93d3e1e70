"""What a provider said when it refused a request, fit to show a client and to log.

Providers word refusals in their own JSON: OpenAI and the servers that copy it
`{"error": {"message", "type", "param", "code"}}`, Anthropic `{"type": "error", "error":
{"type", "message"}}`, Hugging Face and TGI `{"error": "..."}` or `{"error": [...]}`; a proxy
in front of them answers plain text or HTML. They also echo keys back (OpenAI masks the middle,
others do not), so anything key-like leaves the message before the message leaves here.

What a refusal means for the caller is its class: a context-length refusal is also a
ContextTooLong (with the counts the provider gave), any other 4xx but 408 and 429 also a
ModelRejected, and the rest (429, 5xx, 3xx) stays a plain ProviderRefused.
"""

import re
from typing import NamedTuple
from urllib.parse import quote, quote_plus, urlsplit

import msgspec

from application.errors import ContextTooLong, ModelRejected, ModelUnavailable

MESSAGE_CHARS = 300
REDACTED = "[redacted]"

# A token ends before trailing punctuation and whitespace: "key: sk-abc." keeps its full stop.
_ENDS_HERE = r"(?=[.,;:!?)\]}'\"]*(?:\s|$))"
_KEY_LIKE = re.compile(
    "|".join(
        [
            # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), Hugging Face (hf_), Groq (gsk_)
            r"(?<![A-Za-z0-9])(?:sk-|hf_|gsk_)\S{6,}?" + _ENDS_HERE,
            r"\bBearer\s+\S{8,}?" + _ENDS_HERE,
            r"(?<![^\s'\"(\[{])[^\s'\"(\[{]*\*{4,}\S*?" + _ENDS_HERE,  # masked: sk-proj-****abcd
            # any long run of letters and digits both: keys without a known prefix
            r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{32,}(?![\w-])",
        ]
    )
)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)

# How providers say that the prompt and max_tokens exceed the window, most specific first;
# `input` is the prompt's tokens and `limit` the window's, where the wording gives them.
# Taken from the servers' sources and from errors users reported:
_CONTEXT_WORDINGS = tuple(
    re.compile(wording, re.IGNORECASE)
    for wording in (
        # OpenAI, the prompt alone over (code context_length_exceeded): "This model's maximum
        # context length is 8192 tokens. However, your messages resulted in 9000 tokens. ..."
        r"maximum context length is (?P<limit>\d+) tokens\. However, your messages resulted "
        r"in (?P<input>\d+) tokens",
        # OpenAI, DeepSeek, older vLLM: "... However, you requested 9000 tokens (8500 in
        # the messages, 500 in the completion). Please reduce the length of ..."
        r"maximum context length is (?P<limit>\d+) tokens\. However, you requested \d+ tokens "
        r"\((?P<input>\d+) in the messages",
        # OpenRouter: "This endpoint's maximum context length is 8192 tokens. However, you
        # requested about 12000 tokens (10000 of text input, 2000 in the output). ..."
        r"maximum context length is (?P<limit>\d+) tokens\. However, you requested about \d+ "
        r"tokens \((?P<input>\d+) of text input",
        # vLLM (serving_engine.py), the prompt alone over: "... is 8192 tokens. However, your
        # request has 9000 input tokens. Please reduce the length of the input messages."
        r"maximum context length is (?P<limit>\d+) tokens\. However, your request has "
        r"(?P<input>\d+) input tokens",
        # vLLM, max_tokens over what the prompt leaves: "'max_tokens' or 'max_completion_tokens'
        # is too large: 500. This model's maximum context length is 8192 tokens and your
        # request has 7800 input tokens (500 > 8192 - 7800)."
        r"maximum context length is (?P<limit>\d+) tokens and your request has (?P<input>\d+) "
        r"input tokens",
        # newer vLLM: "You passed 9000 input tokens and requested 500 output tokens.
        # However, the model's context length is only 8192 tokens, resulting in ..."
        r"You passed (?P<input>\d+) input tokens and requested \d+ output tokens\. However, "
        r"the model's context length is only (?P<limit>\d+) tokens",
        # any other server that copies OpenAI's first sentence
        r"maximum context length(?: is (?P<limit>\d+) tokens)?",
        # Anthropic, the prompt alone over: "prompt is too long: 208310 tokens > 200000 maximum"
        r"prompt is too long(?:: (?P<input>\d+) tokens > (?P<limit>\d+) maximum)?",
        # Anthropic, with max_tokens: "input length and `max_tokens` exceed context limit:
        # 178959 + 64000 > 200000, decrease input length or `max_tokens` and try again"
        r"input length and `?max_tokens`? exceed context limit: (?P<input>\d+) \+ \d+ > "
        r"(?P<limit>\d+)",
        # TGI (router/src/validation.rs; older versions without the backticks): "Input
        # validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 2000
        # `inputs` tokens and 512 `max_new_tokens`"
        r"`?inputs?`? tokens \+ `?max_new_tokens`? must be <= (?P<limit>\d+)\. Given: "
        r"(?P<input>\d+) `?inputs?`? tokens",
        # TGI, the prompt over max_input_tokens: "`inputs` must have less than 4096 tokens.
        # Given: 4545". That limit is less than the window; a budget made from it errs safe.
        r"`?inputs`? must have less than (?P<limit>\d+) tokens\. Given: (?P<input>\d+)",
    )
)


class ProviderSaid(msgspec.Struct, frozen=True):
    """A refusal's gist: its message (one line, key-free, short, once read_refusal returns it)
    and, where the provider names them, the parameter at fault, its error code (OpenAI's
    `param` and `code`) and the error's type (`type` of OpenAI and Anthropic, TGI's
    `error_type`), which tells an error reported inside a stream worth retrying."""

    message: str = ""
    param: str | None = None
    code: str | None = None
    kind: str | None = None


class ContextCounts(NamedTuple):
    """What a context-length refusal said of the prompt's tokens and the window's, if it did."""

    input_tokens: int | None = None
    limit_tokens: int | None = None


class ProviderRefused(ModelUnavailable):
    """The provider answered an error status. str() is the one report for the client's 502 and
    the log line; `status` and `said` let an adapter tell what to change in a resend. Made by
    `refused`, which picks the subclass that says what the refusal means."""

    def __init__(self, status: int, said: ProviderSaid, *, provider: str, model: str, url: str):
        super().__init__(_report(status, said, provider=provider, model=model, url=url))
        self.status = status
        self.said = said


class RequestRejected(ProviderRefused, ModelRejected):
    """A 4xx (not 408 or 429) about anything but the context length: the request or the
    configuration is wrong, and asking again or elsewhere will not mend it."""


class ContextRefused(ProviderRefused, ContextTooLong):
    """A 4xx saying the prompt and max_tokens exceed the window: a shorter prompt may pass."""

    def __init__(
        self,
        status: int,
        said: ProviderSaid,
        counts: ContextCounts,
        *,
        provider: str,
        model: str,
        url: str,
    ) -> None:
        super().__init__(status, said, provider=provider, model=model, url=url)
        self.input_tokens, self.limit_tokens = counts


def refused(
    status: int, said: ProviderSaid, *, provider: str, model: str, url: str
) -> ProviderRefused:
    """The error status `status` as the failure that says what it means. 408 (the request
    came too slowly) and 429 are about this moment, not the request: not rejections."""
    where = {"provider": provider, "model": model, "url": url}
    if not 400 <= status < 500 or status in (408, 429):
        return ProviderRefused(status, said, **where)
    counts = context_length(said)
    if counts is not None:
        return ContextRefused(status, said, counts, **where)
    return RequestRejected(status, said, **where)


def context_length(said: ProviderSaid) -> ContextCounts | None:
    """The counts when `said` is a context-length refusal (one of _CONTEXT_WORDINGS, or
    OpenAI's code context_length_exceeded in other words), else None."""
    for wording in _CONTEXT_WORDINGS:
        if (found := wording.search(said.message)) is not None:
            return ContextCounts(_count(found, "input"), _count(found, "limit"))
    return ContextCounts() if said.code == "context_length_exceeded" else None


def _count(found: re.Match[str], name: str) -> int | None:
    value = found.groupdict().get(name)
    return None if value is None else int(value)


def read_refusal(body: bytes, content_type: str, secret: str) -> ProviderSaid:
    """What the error body says, whichever provider's shape it has; `secret` (the configured
    key) is removed along with anything else that looks like a key."""
    text = body.decode("utf-8", errors="replace")
    try:
        said = _from_json(msgspec.json.decode(text))
    except msgspec.DecodeError:
        said = ProviderSaid(_from_page(text) if _is_html(text, content_type) else text)
    return msgspec.structs.replace(said, message=_fit(said.message, secret))


def _from_json(data: object) -> ProviderSaid:
    if not isinstance(data, dict):
        return ProviderSaid(_as_text(data))
    error = data.get("error")
    if isinstance(error, dict):  # OpenAI and compatible servers; Anthropic
        message = _as_text(error.get("message")) or _as_text(error.get("type"))
        return ProviderSaid(
            message,
            _as_name(error.get("param")),
            _as_name(error.get("code")),
            _as_name(error.get("type")),
        )
    kind = _as_name(data.get("error_type"))  # TGI
    if isinstance(error, list):  # Hugging Face: one message per fault
        return ProviderSaid("; ".join(_as_text(item) for item in error), kind=kind)
    if error is not None:  # Hugging Face, TGI, Ollama
        return ProviderSaid(_as_text(error), kind=kind)
    for key in ("message", "detail"):  # gateways; FastAPI-based servers
        if key in data:
            return ProviderSaid(_as_text(data[key]))
    return ProviderSaid(_as_text(data))


def _as_text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _as_name(value: object) -> str | None:
    return None if value is None else _as_text(value)


def _is_html(text: str, content_type: str) -> bool:
    return "html" in content_type.lower() or text.lstrip().startswith("<")


def _from_page(text: str) -> str:
    """A proxy's error page: its title ("502 Bad Gateway") is the message; the markup is not."""
    title = _TITLE.search(text)
    return title.group(1) if title else ""


def _fit(text: str, secret: str) -> str:
    """One line, no key, at most MESSAGE_CHARS characters."""
    text = text[: 4 * MESSAGE_CHARS]  # what is cut here would be cut below anyway
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    text = _redact(text, secret)
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 1].rstrip() + "…"
    return text


def _redact(text: str, secret: str) -> str:
    if secret:
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, REDACTED)
        if len(secret) >= 12:  # a leading part, as a provider that masks the rest echoes it
            lead = secret[: max(8, len(secret) // 2)]
            text = re.sub(re.escape(lead) + r"\S*?" + _ENDS_HERE, REDACTED, text)
    return _KEY_LIKE.sub(REDACTED, text)


def _report(status: int, said: ProviderSaid, *, provider: str, model: str, url: str) -> str:
    facts = [f"HTTP {status}"] + ([f"model {model}"] if model else [])
    if status in (401, 403):
        what = "refused the credentials"
    elif status == 404:
        what = "found no such URL or model"
        facts.append(f"URL {_without_secrets(url)}")
    elif 300 <= status < 400:  # e.g. http:// where the provider wants https://
        what = "redirected the request elsewhere"
        facts.append(f"URL {_without_secrets(url)}")
    elif status == 429:
        what = "refused more requests for now"
    elif status >= 500:
        what = "failed"
    else:
        what = "rejected the request"
    message = f": {said.message}" if said.message else ""
    return f"{provider} {what} ({', '.join(facts)}){message}"


def _without_secrets(url: str) -> str:
    """Scheme, host, port and path: a query or user info may carry a key."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
