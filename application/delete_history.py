from application.ports import ChatHistory
from domain.session import SessionKey, parse_session_id


class DeleteHistory:
    """Forget a session. Rules: the id must be valid; deleting what is not there succeeds,
    so a retried delete and a delete of another namespace's id look the same."""

    def __init__(self, history: ChatHistory) -> None:
        self._history = history

    async def execute(self, namespace: str, session_id: str) -> None:
        await self._history.delete(SessionKey(namespace, parse_session_id(session_id)))
