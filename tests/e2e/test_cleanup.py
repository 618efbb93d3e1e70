"""The cleanup job in a running service: it deletes histories, once per interval in total."""

import re
import time

from tests.e2e.conftest import ServiceLauncher, wait_until

CLEANUP_EVERY_SECOND = {
    "redis": {"url": "", "data_dir": "./data"},
    "cleanup": {"enabled": "true", "interval_seconds": "1"},
}


def _purges(stderr: str) -> list[int]:
    return [int(n) for n in re.findall(r"cleanup deleted (\d+) chat histories", stderr)]


def test_two_workers_purge_once_per_interval_in_total(launch: ServiceLauncher) -> None:
    service = launch(CLEANUP_EVERY_SECOND, workers=2)
    wait_until(lambda: service.stderr().count(" ready: ") == 2, 15, "both workers ready")
    with service.client() as http:
        service.expect(http.post("/chat/", json={"session_id": "doomed", "message": "hi"}), 200)
        wait_until(lambda: http.get("/chat/doomed").status_code == 404, 5, "history purged")

    before = len(_purges(service.stderr()))
    time.sleep(4)
    during = len(_purges(service.stderr())) - before
    service.stop()

    # Each worker logs the purges it ran: 4 seconds hold 4 (give or take the edges), where
    # a purge per worker would make 8.
    assert 3 <= during <= 5, (during, service.output())
