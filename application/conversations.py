import uuid

from application.errors import SessionNotFound
from application.ports import ChatHistory, Clock
from application.send_message import utc_now
from domain.errors import InvalidInput
from domain.message import Message
from domain.session import SessionInfo, SessionKey, parse_session_id

# OpenAI's limits on a conversation's metadata.
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512


class InvalidMetadata(InvalidInput):
    pass


class Conversations:
    """Sessions as OpenAI's Conversations show them.

    Rules:
    - A conversation can be created before its first message: an id of its own (`conv_…`)
      with the client's metadata (OpenAI's limits: METADATA_MAX_PAIRS pairs, keys and
      values of at most METADATA_KEY_MAX_CHARS and METADATA_VALUE_MAX_CHARS), kept as long
      as a history would be.
    - Every session is a conversation, whichever API started it: one exists while it was
      created so or has stored messages, in the caller's namespace only. One that was not
      created so is as old as its oldest stored message and has no metadata.
    - Deleting one that does not exist is an error (OpenAI's rule; DELETE /chat/ differs).
    """

    def __init__(self, history: ChatHistory, *, clock: Clock = utc_now) -> None:
        self._history = history
        self._clock = clock

    async def create(self, namespace: str, metadata: dict[str, str]) -> tuple[str, SessionInfo]:
        _check_metadata(metadata)
        session_id = f"conv_{uuid.uuid4().hex}"
        info = SessionInfo(self._clock(), metadata)
        await self._history.open(SessionKey(namespace, session_id), info)
        return session_id, info

    async def show(self, namespace: str, session_id: str) -> tuple[SessionInfo, list[Message]]:
        """The conversation and its stored messages, oldest first."""
        return await self._show(SessionKey(namespace, parse_session_id(session_id)))

    async def delete(self, namespace: str, session_id: str) -> None:
        key = SessionKey(namespace, parse_session_id(session_id))
        await self._show(key)
        await self._history.delete(key)

    async def _show(self, key: SessionKey) -> tuple[SessionInfo, list[Message]]:
        info = await self._history.info(key)
        messages = await self._history.load(key)
        if info is None:
            if not messages:
                raise SessionNotFound(f"no conversation {key.session_id!r}")
            info = SessionInfo(messages[0].created_at)
        return info, messages


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > METADATA_MAX_PAIRS:
        raise InvalidMetadata(
            f"metadata holds {len(metadata)} pairs; the limit is {METADATA_MAX_PAIRS}"
        )
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_MAX_CHARS:
            raise InvalidMetadata(
                f"metadata key {key[:20]!r}... is over {METADATA_KEY_MAX_CHARS} characters"
            )
        if len(value) > METADATA_VALUE_MAX_CHARS:
            raise InvalidMetadata(
                f"metadata value of {key!r} is over {METADATA_VALUE_MAX_CHARS} characters"
            )
