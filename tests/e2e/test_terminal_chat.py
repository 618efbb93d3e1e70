"""`chat-service chat` in a pseudo-terminal, against the real service: what a person at a
keyboard types (Enter, Ctrl-C, Ctrl-D, the arrow keys) and what they see.

The echo model streams its reply word by word, WORD_SECONDS apart, so a Ctrl-C lands mid-reply.
Each helper leaves the client at a prompt it has already read past, ready for the next line.
"""

import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    REPO_ROOT,
    Service,
    ServiceLauncher,
    echo_reply,
    free_port,
    openai_config,
    service_environment,
    words,
)
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    openai_stream,
    openai_stream_error,
    streamed,
)
from tests.support.redis_server import RedisServer
from tests.support.terminal import CTRL_C, CTRL_D, Terminal

TOKEN = "tok-terminal"
WORD_SECONDS = 0.02
PROMPT = r"\n(?=> )"  # read up to the prompt, which the next line typed starts with
QUIET_LINE = r"\[primary · \d+ in / \d+ out\]"
UP = "\x1b[A"  # the up arrow, as an xterm sends it


@pytest.fixture(scope="module")
def service(module_launch: ServiceLauncher, module_redis: RedisServer) -> Service:
    return module_launch(
        {
            "redis": {"url": module_redis.url, "key_prefix": "terminal"},
            "llm": {"echo_word_seconds": str(WORD_SECONDS)},
        }
    )


@pytest.fixture(scope="module")
def guarded(module_launch: ServiceLauncher, module_redis: RedisServer) -> Service:
    return module_launch(
        {
            "auth": {"tokens": TOKEN, "rate_limit": "1/minute"},
            "redis": {"url": module_redis.url, "key_prefix": "terminal-guarded"},
            "llm": {"echo_word_seconds": str(WORD_SECONDS)},
        }
    )


@pytest.fixture(scope="module")
def failing(
    module_launch: ServiceLauncher, module_redis: RedisServer, module_stub: ProviderStub
) -> Service:
    return module_launch(
        {
            "redis": {"url": module_redis.url, "key_prefix": "terminal-failing"},
            "llm": openai_config(module_stub),
        }
    )


@pytest.fixture
def http(service: Service) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


@contextmanager
def chat_client(*args: str, home: Path, env: Mapping[str, str] | None = None) -> Iterator[Terminal]:
    """`chat-service chat ARGS` in a terminal, its home (and history file) in `home`,
    read up to its first prompt."""
    command = [sys.executable, "-m", "entrypoints.cli", "chat", *args]
    environment = service_environment({"HOME": str(home), "TERM": "xterm", **(env or {})})
    with Terminal(command, environment, REPO_ROOT) as terminal:
        terminal.expect(PROMPT)
        yield terminal


def turn(terminal: Terminal, message: str, keys: str | None = None) -> str:
    """Types `message` (or `keys` that bring it back) and Enter; the reply as shown."""
    terminal.send((message if keys is None else keys) + "\r")
    shown = terminal.expect(rf"> {re.escape(message)}\n([^\n]*)\n{QUIET_LINE}{PROMPT}")
    return shown[1]


def command(terminal: Terminal, line: str) -> str:
    """Types a command; what it printed before the next prompt."""
    terminal.send_line(line)
    return terminal.expect(rf"> {re.escape(line)}\n(.*?){PROMPT}")[1]


def test_a_reply_streams_whole_and_the_session_carries_the_next_turn(
    service: Service, tmp_path: Path
) -> None:
    with chat_client("--url", service.url, home=tmp_path) as terminal:
        assert turn(terminal, "hello") == echo_reply("hello", 0)
        assert turn(terminal, "again") == echo_reply("again", 2)  # the model saw the first turn
        terminal.send_line("/quit")
        assert terminal.wait_exit() == 0


def test_ctrl_c_mid_reply_stops_it_and_what_was_shown_is_what_is_stored(
    service: Service, http: httpx.Client, tmp_path: Path, sid: str
) -> None:
    message = words(80)  # a reply of 96 words: about two seconds
    with chat_client("--url", service.url, "--session", sid, home=tmp_path) as terminal:
        terminal.send_line(message)
        terminal.expect(rf"> {message}\n.*You said: word0 word1 ")
        terminal.send(CTRL_C)
        terminal.expect(rf"\n\(stopped\) {QUIET_LINE}{PROMPT}")
        shown = re.search(rf"> {message}\n([^\n]*)\n\(stopped\)", terminal.text)
        assert shown is not None, terminal.text
        reply = shown[1].replace("^C", "")  # the terminal echoes the Ctrl-C where it was typed
        assert "word79" not in reply, "the reply was not stopped"

        stored = service.expect(http.get(f"/chat/{sid}"), 200)["messages"]
        assert [(m["role"], m["content"]) for m in stored] == [
            ("user", message),
            ("assistant", reply),
        ]
        assert turn(terminal, "after") == echo_reply("after", 2)  # still there, same session


def test_new_history_delete_and_quit(
    service: Service, http: httpx.Client, tmp_path: Path, sid: str
) -> None:
    with chat_client("--url", service.url, "--session", sid, home=tmp_path) as terminal:
        assert all(name in command(terminal, "/help") for name in ("/new", "/history", "/delete"))
        turn(terminal, "one")
        assert command(terminal, "/history") == f"you: one\nprimary: {echo_reply('one', 0)}"

        assert "deleted" in command(terminal, "/delete")
        service.expect(http.get(f"/chat/{sid}"), 404)
        assert turn(terminal, "two") == echo_reply("two", 0)
        assert turn(terminal, "three") == echo_reply("three", 2)
        service.expect(http.get(f"/chat/{sid}"), 404)  # the new conversation has its own id

        assert "new conversation" in command(terminal, "/new")
        assert turn(terminal, "four") == echo_reply("four", 0)
        terminal.send_line("/quit")
        assert terminal.wait_exit() == 0


def test_ctrl_c_at_the_prompt_clears_the_line_ctrl_d_leaves_and_lines_are_remembered(
    service: Service, tmp_path: Path
) -> None:
    with chat_client("--url", service.url, home=tmp_path) as terminal:
        terminal.send("half a line")
        terminal.expect("half a line")
        # A Ctrl-C that lands while readline is still handling a key is only noticed at the
        # next key (CPython checks signals when its wait for input is interrupted): a person
        # never types that fast, a test does.
        time.sleep(0.2)
        terminal.send(CTRL_C)
        terminal.expect(PROMPT)
        assert turn(terminal, "fresh") == echo_reply("fresh", 0)
        terminal.send(CTRL_D)
        assert terminal.wait_exit() == 0
    assert (tmp_path / ".chat_service_history").read_text().splitlines() == ["fresh"]

    with chat_client("--url", service.url, home=tmp_path) as terminal:
        assert turn(terminal, "fresh", keys=UP) == echo_reply("fresh", 0)  # history, new session


def test_an_unreachable_service_is_one_line_naming_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    home = tmp_path / "missing"  # no history file can be written there: nothing is said
    with chat_client(home=home, env={"CHAT_URL": url}) as terminal:
        line = command(terminal, "hello")
        assert re.fullmatch(rf"error: cannot reach the service at {url} \([^\n]*\)", line), line
        terminal.send_line("/quit")
        assert terminal.wait_exit() == 0
        assert terminal.text.count("error") == 1, terminal.text


def test_without_a_token_the_refusal_says_how_to_pass_one(guarded: Service, tmp_path: Path) -> None:
    with chat_client("--url", guarded.url, home=tmp_path) as terminal:
        assert command(terminal, "hello") == (
            "error: the service refused the token; pass --token or set CHAT_TOKEN"
        )


def test_a_rate_limit_says_how_long_to_wait(guarded: Service, tmp_path: Path) -> None:
    with chat_client("--url", guarded.url, home=tmp_path, env={"CHAT_TOKEN": TOKEN}) as terminal:
        assert turn(terminal, "hello") == echo_reply("hello", 0)
        line = command(terminal, "again")
        wait = re.fullmatch(r"error: rate limited: try again in (\d+) s", line)
        assert wait is not None, line
        assert 1 <= int(wait[1]) <= 60


def test_a_failing_model_is_one_line_whether_before_or_during_its_reply(
    failing: Service, module_stub: ProviderStub, tmp_path: Path
) -> None:
    module_stub.reset()
    module_stub.plan(
        error_reply(500),
        streamed([openai_stream("half ", end=False), openai_stream_error("it broke")]),
    )
    with chat_client("--url", failing.url, home=tmp_path) as terminal:
        assert command(terminal, "before").startswith("error: the model failed: ")
        during = command(terminal, "during").split("\n")
        assert during[0] == "half "
        assert during[1].startswith("error: the model failed: "), during
        assert len(during) == 2, during
    module_stub.reset()
