"""Retried requests: the Idempotency-Key rules and the receipt a request leaves behind."""

import hashlib
import re

import msgspec

from domain.answer import Usage
from domain.errors import InvalidInput

IDEMPOTENCY_KEY_MAX_LENGTH = 128
IDEMPOTENCY_KEY_ALPHABET = r"\x20-\x7e"  # printable ASCII, as a regex character class
_IDEMPOTENCY_KEY = re.compile(rf"[{IDEMPOTENCY_KEY_ALPHABET}]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}")

# How long a completed request is remembered: a repeat within this returns its reply.
RECEIPT_TTL_SECONDS = 24 * 3600


class InvalidIdempotencyKey(InvalidInput):
    pass


class Reply(msgspec.Struct, frozen=True):
    """What a client is answered for a message."""

    session_id: str
    response: str
    usage: Usage | None = None  # None only in receipts stored before replies counted tokens
    model: str | None = None  # the configured model that answered; None in older receipts


class Receipt(msgspec.Struct, frozen=True):
    """A request made with an Idempotency-Key, scoped to its caller's namespace.

    `reply` is None while the first request with this key is still in flight. The
    fingerprint tells a true repeat from a different request that reuses the key.
    """

    namespace: str
    key: str
    fingerprint: str
    reply: Reply | None = None
    # A streamed request's session and reply while it runs, for a repeat to follow it.
    session_id: str | None = None
    reply_id: str | None = None


def parse_idempotency_key(raw: str) -> str:
    """1-128 printable ASCII characters, surrounding white space ignored."""
    key = raw.strip()
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters"
        )
    return key


def fingerprint(session_id: str | None, message: str, *also: object) -> str:
    """What makes two requests the same: the session they name (blank = a new one), the
    message, exactly as sent, and whatever `also` else the request asked of its turn."""
    session = (session_id or "").strip()
    return hashlib.sha256(msgspec.msgpack.encode((session, message, *also))).hexdigest()
