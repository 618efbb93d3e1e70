"""The embedded redis-server: one per data_dir, shared by every process, data kept on disk."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from adapters.embedded_redis import EmbeddedRedis

EmbeddedFactory = Callable[[Path], EmbeddedRedis]


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


@pytest.fixture
def embedded() -> Iterator[EmbeddedFactory]:
    """Builds EmbeddedRedis instances and stops them all after the test, even if it failed."""
    made: list[EmbeddedRedis] = []

    def make(data_dir: Path) -> EmbeddedRedis:
        made.append(EmbeddedRedis(data_dir))
        return made[-1]

    yield make
    for server in reversed(made):
        server.stop()


def test_start_returns_a_unix_url_that_answers(embedded: EmbeddedFactory, tmp_path: Path) -> None:
    server = embedded(tmp_path / "data")

    url = server.start()

    assert url.startswith("unix://")
    assert answers(url)
    assert server.owned


def test_data_survives_a_stop_and_a_new_start(embedded: EmbeddedFactory, tmp_path: Path) -> None:
    first = embedded(tmp_path / "data")
    with redis.Redis.from_url(first.start()) as client:
        client.rpush("chat:history:public:s-1", "question", "answer")
    first.stop()
    assert not answers(first.url)

    with redis.Redis.from_url(embedded(tmp_path / "data").start()) as client:
        assert client.lrange("chat:history:public:s-1", 0, -1) == [b"question", b"answer"]


def test_a_second_instance_reuses_the_running_server(
    embedded: EmbeddedFactory, tmp_path: Path
) -> None:
    first = embedded(tmp_path / "data")
    second = embedded(tmp_path / "data")
    first.start()

    assert second.start() == first.url
    assert not second.owned

    second.stop()
    assert first.owned
    assert answers(first.url)


def test_a_data_dir_too_long_for_a_socket_path_still_works(
    embedded: EmbeddedFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / ("d" * 120)
    server = embedded(data_dir)

    url = server.start()

    assert answers(url)
    assert len(str(server.socket_path)) <= 100
    assert data_dir.resolve() not in server.socket_path.parents
    assert (data_dir / "redis.log").exists()


def test_stop_is_idempotent(embedded: EmbeddedFactory, tmp_path: Path) -> None:
    never_started = embedded(tmp_path / "unused")
    never_started.stop()
    server = embedded(tmp_path / "data")
    server.start()

    server.stop()
    server.stop()

    assert not server.owned
    assert not answers(server.url)
