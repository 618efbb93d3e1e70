from application.errors import SessionNotFound
from application.ports import ReplyLog
from domain.session import SessionKey, parse_session_id


class StopReply:
    """Ask the session's running reply to stop. Its producer, on whichever worker, sees the
    request at its next heartbeat, stores the text written so far and ends with done.

    Rules: the id must be valid; a session with no reply running (for this caller) is not
    found.
    """

    def __init__(self, log: ReplyLog) -> None:
        self._log = log

    async def execute(self, namespace: str, session_id: str) -> None:
        key = SessionKey(namespace, parse_session_id(session_id))
        if not await self._log.request_stop(key):
            raise SessionNotFound(f"session {key.session_id!r} has no reply running")
