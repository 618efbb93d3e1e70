"""Session ids and the namespaces that keep one caller's sessions apart from another's."""

import hashlib
import re
import uuid
from datetime import datetime

import msgspec

from domain.errors import InvalidSessionId

SESSION_ID_MAX_LENGTH = 128
SESSION_ID_ALPHABET = "A-Za-z0-9._:-"  # as a regex character class
_SESSION_ID = re.compile(rf"[{SESSION_ID_ALPHABET}]{{1,{SESSION_ID_MAX_LENGTH}}}")

# Exactly what str.strip() removes, spelled out so the OpenAPI document states the same rule.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# Callers without a token (auth off) all share this namespace.
PUBLIC_NAMESPACE = "public"


class SessionKey(msgspec.Struct, frozen=True):
    """Where a history lives: a session id is only unique within its namespace."""

    namespace: str
    session_id: str


class SessionInfo(msgspec.Struct, frozen=True):
    """What a session was opened with, for one opened before its first exchange (OpenAI's
    POST /v1/conversations): when, and the client's metadata."""

    created_at: datetime
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


def new_session_id() -> str:
    return uuid.uuid4().hex


def parse_session_id(raw: str) -> str:
    """Strip surrounding whitespace and check the id's alphabet and length.

    The alphabet has no glob, separator-escaping or control characters, so an id can
    never reach outside its own key in the store.
    """
    session_id = raw.strip(WHITESPACE)
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidSessionId(
            f"session_id must be 1-{SESSION_ID_MAX_LENGTH} characters of A-Z a-z 0-9 . _ : -"
        )
    return session_id


def session_id_or_new(raw: str | None) -> str:
    """A missing, null or blank session_id starts a new session."""
    if raw is None or not raw.strip(WHITESPACE):
        return new_session_id()
    return parse_session_id(raw)


def namespace_for(token: str | None) -> str:
    """A token's namespace is a digest of it: keys never hold the secret itself."""
    if token is None:
        return PUBLIC_NAMESPACE
    return hashlib.sha256(token.encode()).hexdigest()[:32]
