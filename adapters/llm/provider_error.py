"""What a provider said when it refused a request, fit to show a client and to log.

Providers word refusals in their own JSON: OpenAI and the servers that copy it
`{"error": {"message", "type", "param", "code"}}`, Anthropic `{"type": "error", "error":
{"type", "message"}}`, Hugging Face and TGI `{"error": "..."}` or `{"error": [...]}`; a proxy
in front of them answers plain text or HTML. They also echo keys back (OpenAI masks the middle,
others do not), so anything key-like leaves the message before the message leaves here.
"""

import re
from urllib.parse import quote, quote_plus, urlsplit

import msgspec

from application.errors import ModelUnavailable

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


class ProviderSaid(msgspec.Struct, frozen=True):
    """A refusal's gist: its message (one line, key-free, short, once read_refusal returns it)
    and, where the provider names them, the parameter at fault, its error code (OpenAI's
    `param` and `code`) and the error's type (`type` of OpenAI and Anthropic, TGI's
    `error_type`), which tells an error reported inside a stream worth retrying."""

    message: str = ""
    param: str | None = None
    code: str | None = None
    kind: str | None = None


class ProviderRefused(ModelUnavailable):
    """The provider answered an error status. str() is the one report for the client's 502 and
    the log line; `status` and `said` let an adapter tell what to change in a resend."""

    def __init__(self, status: int, said: ProviderSaid, *, provider: str, model: str, url: str):
        super().__init__(_report(status, said, provider=provider, model=model, url=url))
        self.status = status
        self.said = said


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
