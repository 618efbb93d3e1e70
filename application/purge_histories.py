from datetime import UTC, datetime, timedelta
from typing import Literal

from application.ports import ChatHistory, JobLock

CleanupScope = Literal["idle", "all"]


class PurgeHistories:
    """The periodic cleanup: delete chat histories, once per interval in total.

    Rules:
    - Scope "idle" (the default) deletes only the histories nobody has written to for at
      least one interval, so a conversation in use is never cut; scope "all" deletes every
      history, in use or not (the seed's literal "clear the cache every hour").
    - Every process sharing the store schedules the job on the same wall-clock slots; only
      the first to claim a slot purges, so N workers or replicas purge once, not N times.
    - Nothing but chat histories is deleted.
    """

    def __init__(
        self,
        history: ChatHistory,
        lock: JobLock,
        *,
        interval_seconds: int,
        scope: CleanupScope = "idle",
    ) -> None:
        self._history = history
        self._lock = lock
        self._interval = interval_seconds
        self._scope = scope

    def slot(self, timestamp: float) -> int:
        """The interval a run belongs to; rounding absorbs a scheduler firing a little early."""
        return round(timestamp / self._interval)

    async def execute(self, timestamp: float) -> int | None:
        """Purge and return the count, or None when another process has this slot."""
        name = f"cleanup:{self.slot(timestamp)}"
        if not await self._lock.claim(name, ttl_seconds=2 * self._interval):
            return None
        if self._scope == "all":
            return await self._history.purge()
        now = datetime.fromtimestamp(timestamp, UTC)
        return await self._history.purge(written_before=now - timedelta(seconds=self._interval))
