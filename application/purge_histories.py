from application.ports import ChatHistory, JobLock


class PurgeHistories:
    """The periodic cleanup: delete every chat history, once per interval in total.

    Rules: every process sharing the store schedules the job on the same wall-clock slots;
    only the first to claim a slot purges, so N workers or replicas purge once, not N times.
    Nothing but chat histories is deleted.
    """

    def __init__(self, history: ChatHistory, lock: JobLock, *, interval_seconds: int) -> None:
        self._history = history
        self._lock = lock
        self._interval = interval_seconds

    def slot(self, timestamp: float) -> int:
        """The interval a run belongs to; rounding absorbs a scheduler firing a little early."""
        return round(timestamp / self._interval)

    async def execute(self, timestamp: float) -> int | None:
        """Purge and return the count, or None when another process has this slot."""
        name = f"cleanup:{self.slot(timestamp)}"
        if not await self._lock.claim(name, ttl_seconds=2 * self._interval):
            return None
        return await self._history.purge_all()
