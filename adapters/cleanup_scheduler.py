"""The periodic history cleanup on APScheduler 3.x, aligned to wall-clock slots."""

import logging
import time
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from adapters.prometheus_metrics import PrometheusMetrics
from application.errors import HistoryUnavailable
from application.purge_histories import PurgeHistories

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CleanupScheduler:
    """Runs PurgeHistories every interval_seconds, counted from the Unix epoch.

    Every process fires at the same instants (for an hour: on the hour), so the slot lock
    in PurgeHistories lets exactly one of them purge per interval. The scheduler is built
    in start(), inside the running event loop, as AsyncIOScheduler 3.x requires.
    """

    def __init__(
        self,
        purge: PurgeHistories,
        *,
        interval_seconds: int,
        metrics: PrometheusMetrics | None = None,
    ) -> None:
        self._purge = purge
        self._interval = interval_seconds
        self._metrics = metrics
        self._scheduler: AsyncIOScheduler | None = None
        self.runs = 0  # purges this process performed

    async def run_once(self) -> int | None:
        try:
            deleted = await self._purge.execute(time.time())
        except HistoryUnavailable:
            log.warning("cleanup skipped: the history store is unavailable")
            return None
        if deleted is not None:
            self.runs += 1
            if self._metrics is not None:
                self._metrics.cleaned_up(deleted)
            log.info("cleanup deleted %d chat histories", deleted)
        return deleted

    def start(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.add_job(
            self.run_once,
            IntervalTrigger(seconds=self._interval, start_date=_EPOCH, timezone=UTC),
            id="purge-histories",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, self._interval // 2),
        )
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
            log.info("cleanup scheduler stopped")
        self._scheduler = None
