"""Session ids and the namespaces that keep one caller's sessions apart from another's."""

import hashlib
import re
import uuid

import msgspec

from domain.errors import InvalidSessionId

SESSION_ID_MAX_LENGTH = 128
_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Callers without a token (auth off) all share this namespace.
PUBLIC_NAMESPACE = "public"


class SessionKey(msgspec.Struct, frozen=True):
    """Where a history lives: a session id is only unique within its namespace."""

    namespace: str
    session_id: str


def new_session_id() -> str:
    return uuid.uuid4().hex


def parse_session_id(raw: str) -> str:
    """Strip surrounding whitespace and check the id's alphabet and length.

    The alphabet has no glob, separator-escaping or control characters, so an id can
    never reach outside its own key in the store.
    """
    session_id = raw.strip()
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidSessionId(
            f"session_id must be 1-{SESSION_ID_MAX_LENGTH} characters of A-Z a-z 0-9 . _ : -"
        )
    return session_id


def session_id_or_new(raw: str | None) -> str:
    """A missing, null or blank session_id starts a new session."""
    if raw is None or not raw.strip():
        return new_session_id()
    return parse_session_id(raw)


def namespace_for(token: str | None) -> str:
    """A token's namespace is a digest of it: keys never hold the secret itself."""
    if token is None:
        return PUBLIC_NAMESPACE
    return hashlib.sha256(token.encode()).hexdigest()[:32]
