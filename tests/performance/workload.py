"""What the benchmark sends and stores: message texts, session ids, seeded histories.

Shared by the harness (bench.py, the load generators) and the service side (app.py), so that
the bare proxy's conversation is exactly as long as a seeded history.
"""

import asyncio
import itertools
import random
import string
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from adapters.redis_history import RedisHistory
from domain.message import Message
from domain.session import SessionKey, namespace_for
from tests.performance.provider_stub import ANSWER

# What every benchmark request asks (and every seeded question says): a short chat message.
USER_TEXT = "How much time does the service add around the provider call? Just curious."
ASSISTANT_TEXT = ANSWER  # the stand-in's reply, so seeded histories look grown via /chat/
# The service runs with auth on and this one token, which every generator sends; the
# seeded sessions are its namespace's, so /chat/ and the /bench/ routes read the same ones.
BENCH_TOKEN = "bench-token"
BENCH_NAMESPACE = namespace_for(BENCH_TOKEN)


def session_ids(prefix: str, count: int) -> list[str]:
    """The ids the load generators spread requests over (wrk_post.lua names them alike)."""
    return [f"{prefix}{number}" for number in range(count)]


def random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + " ", k=length))


async def seed(
    history: RedisHistory,
    session_ids: Iterable[str],
    messages: int,
    *,
    texts: tuple[str, str] = (USER_TEXT, ASSISTANT_TEXT),
    concurrency: int = 64,
    namespace: str = BENCH_NAMESPACE,
) -> int:
    """Give each session exactly `messages` messages (an even number), written as production
    writes them: RedisHistory.append_exchange, one question and its reply per call.

    Every question has its own timestamp, since the store skips an exchange whose question
    (text and timestamp) it already holds. Returns the number of exchanges written.
    """
    assert messages % 2 == 0, "histories are stored in whole exchanges"
    clock = itertools.count()
    start = datetime.now(UTC)
    jobs = iter([(sid, n) for sid in session_ids for n in range(messages // 2)])

    async def writer() -> int:
        written = 0
        for sid, _ in jobs:
            tick = next(clock)
            question = Message("user", texts[0], start + timedelta(microseconds=2 * tick))
            answer = Message("assistant", texts[1], start + timedelta(microseconds=2 * tick + 1))
            await history.append_exchange(SessionKey(namespace, sid), question, answer)
            written += 1
        return written

    return sum(await asyncio.gather(*(writer() for _ in range(concurrency))))
