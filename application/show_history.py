from application.errors import SessionNotFound
from application.ports import ChatHistory
from domain.message import Message
from domain.session import SessionKey, parse_session_id


class ShowHistory:
    """A session's stored messages, oldest first.

    Rules: the id must be valid; a session with no messages (never written, expired,
    deleted, or another namespace's) does not exist.
    """

    def __init__(self, history: ChatHistory) -> None:
        self._history = history

    async def execute(self, namespace: str, session_id: str) -> list[Message]:
        messages = await self._history.load(SessionKey(namespace, parse_session_id(session_id)))
        if not messages:
            raise SessionNotFound(f"no session {session_id.strip()!r}")
        return messages
