"""`chat-service chat`: a person chats with a running service from a terminal.

A prompt with line editing and a history of typed lines (readline); each line goes to
POST /chat/stream and its reply is printed as it streams. Ctrl-C during a reply asks the
service to stop it (POST /chat/{id}/stop) and reads the stream on to its `done`, so what was
shown is what is stored; Ctrl-C at the prompt clears the line, Ctrl-D or /quit leaves.
Every failure is one line, then the prompt again.
"""

import contextlib
import json
import os
import readline
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from adapters.llm.sse import SseReader, SseTooLong

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, TOKEN_ENV = "CHAT_URL", "CHAT_TOKEN"
HISTORY_FILE = ".chat_service_history"  # under the user's home
HISTORY_LINES = 1000
EVENT_LIMIT = 4 * 1024 * 1024  # a reply arrives in deltas; done repeats it whole
# Before its first text the service may wait on the model's retries; once it streams it sends
# a keep-alive every 15 s, so a longer silence is a connection that died.
TIMEOUT = httpx.Timeout(10.0, read=120.0)

HELP = """\
Type a message and press Enter; the reply streams in. Ctrl-C stops a reply.
  /new      start a new conversation
  /history  show this conversation
  /delete   delete this conversation, then start a new one
  /quit     leave (or Ctrl-D)
  /help     this list"""


class ChatError(Exception):
    """Something the person must be told, in one line; the conversation goes on."""


def error_line(status: int, detail: str, retry_after: str | None = None) -> str:
    """What a status from the service means, in the words of someone at a terminal."""
    if status == 401:
        return f"the service refused the token; pass --token or set {TOKEN_ENV}"
    if status == 429:
        return f"rate limited: try again in {retry_after} s" if retry_after else "rate limited"
    if status == 502:
        return f"the model failed: {detail}"
    if status == 504:
        return f"the model timed out: {detail}"
    if status == 503:
        return f"storage unavailable: {detail}"
    return f"the service answered {status}: {detail}"


def _failure(response: httpx.Response) -> ChatError:
    response.read()
    try:
        detail = str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):  # not the service's JSON: a proxy's page, say
        detail = response.text or response.reason_phrase
    detail = " ".join(detail.split())[:300]  # one line, whatever came
    return ChatError(error_line(response.status_code, detail, response.headers.get("retry-after")))


class Styled:
    """Quiet (dim) text on a terminal that shows it; plain text elsewhere or with NO_COLOR."""

    def __init__(self) -> None:
        self.enabled = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def dim(self, text: str) -> str:
        return f"\x1b[2m{text}\x1b[0m" if self.enabled else text


class TerminalChat:
    def __init__(self, client: httpx.Client, session_id: str | None = None) -> None:
        self.client = client
        self.session_id = session_id
        self.style = Styled()

    # --- the prompt -------------------------------------------------------------------------

    def run(self) -> int:
        print(self.style.dim(f"chat-service at {self.client.base_url} · /help for commands"))
        while True:
            try:
                line = input("> ").strip()
            except KeyboardInterrupt:  # as a shell does: drop the line, prompt again
                print()
                continue
            except EOFError:
                print()
                return 0
            if not line:
                continue
            if line == "/quit":
                return 0
            try:
                if line.startswith("/"):
                    self.command(line)
                else:
                    self.send(line)
            except ChatError as error:
                print(f"error: {error}", file=sys.stderr, flush=True)
            except httpx.HTTPError as error:
                print(f"error: {self._network_error(error)}", file=sys.stderr, flush=True)
            except KeyboardInterrupt:  # during /history or /delete: give up on it
                print()

    def command(self, line: str) -> None:
        if line == "/help":
            print(HELP)
        elif line == "/new":
            self.session_id = None
            print(self.style.dim("(a new conversation)"))
        elif line == "/history":
            self.show_history()
        elif line == "/delete":
            if self.session_id is not None:
                response = self.client.delete(f"/chat/{self.session_id}")
                if response.status_code != 204:
                    raise _failure(response)
            self.session_id = None
            print(self.style.dim("(deleted; a new conversation starts)"))
        else:
            raise ChatError(f"unknown command {line.split()[0]}; /help lists them")

    def show_history(self) -> None:
        if self.session_id is None:
            print(self.style.dim("(nothing said yet)"))
            return
        response = self.client.get(f"/chat/{self.session_id}")
        if response.status_code == 404:
            print(self.style.dim("(nothing stored for this conversation)"))
            return
        if response.status_code != 200:
            raise _failure(response)
        for message in response.json()["messages"]:
            who = "you" if message["role"] == "user" else message.get("model") or "model"
            print(f"{self.style.dim(who + ':')} {message['content']}")

    def _network_error(self, error: httpx.HTTPError) -> str:
        url = self.client.base_url
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            return f"cannot reach the service at {url} ({error})"
        if isinstance(error, httpx.TimeoutException):
            return f"the service at {url} did not answer in time"
        return f"lost the connection to {url} ({error or type(error).__name__})"

    # --- one turn ---------------------------------------------------------------------------

    def send(self, message: str) -> None:
        """Streams the reply to `message`; the first Ctrl-C stops it in the service, a
        second leaves it running there and returns to the prompt."""
        stop = _StopOnInterrupt(self.client)
        body = {"session_id": self.session_id, "message": message}
        try:
            with stop.armed(), self.client.stream("POST", "/chat/stream", json=body) as response:
                if response.status_code != 200:
                    raise _failure(response)
                self._show_reply(_events(response), stop)
        except KeyboardInterrupt:
            print(self.style.dim("\n(left the reply running in the service)"))
        except httpx.HTTPError:
            if stop.session_id is not None:
                print()  # the reply had begun: the error goes on a line of its own
            raise

    def _show_reply(self, events: Iterator[tuple[str, Any]], stop: "_StopOnInterrupt") -> None:
        for name, data in events:
            if name == "session":
                self.session_id = data["session_id"]
                stop.session_found(self.session_id)
            elif name == "delta":
                print(data["text"], end="", flush=True)
            elif name == "done":
                print()
                usage = data.get("usage") or {}
                quiet = f"[{data.get('model', '?')} · {usage.get('input_tokens', '?')} in / "
                quiet += f"{usage.get('output_tokens', '?')} out]"
                print(self.style.dim(f"(stopped) {quiet}" if data.get("stopped") else quiet))
                return
            elif name == "error":
                print()
                raise ChatError(error_line(data["status_code"], data["detail"]))
        print()
        raise ChatError("the reply ended before its end was sent; /history shows what was stored")


def _events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event name, its JSON data) of a Server-Sent Events body, as they arrive."""
    reader = SseReader(EVENT_LIMIT)
    try:
        for chunk in response.iter_bytes():
            for event in reader.feed(chunk):
                yield event.name, json.loads(event.data)
        for event in reader.end():
            yield event.name, json.loads(event.data)
    except (SseTooLong, ValueError) as error:
        raise ChatError(f"the service sent something that is not a reply ({error})") from None


class _StopOnInterrupt:
    """While armed, Ctrl-C asks the service to stop the reply instead of interrupting the
    read: the stream then carries on to its `done`, which holds what was stored. The stop
    request goes from a thread, since a signal handler may run in the middle of the
    client's own code."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.wanted = False
        self.session_id: str | None = None

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGINT, self._interrupted)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def session_found(self, session_id: str) -> None:
        self.session_id = session_id
        if self.wanted:  # Ctrl-C came before the reply had a session: stop it now
            self._send()

    def _interrupted(self, _signum: int, _frame: FrameType | None) -> None:
        if self.wanted:
            raise KeyboardInterrupt
        self.wanted = True
        if self.session_id is not None:
            self._send()

    def _send(self) -> None:
        def stop() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the stream tells how it ended
                self.client.post(f"/chat/{self.session_id}/stop")

        threading.Thread(target=stop, daemon=True).start()


@contextlib.contextmanager
def typed_lines_history() -> Iterator[None]:
    """readline's history of typed lines, kept in ~/.chat_service_history; a home that
    cannot be read or written only loses the history."""
    path = Path.home() / HISTORY_FILE
    readline.set_history_length(HISTORY_LINES)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)


def chat(url: str | None, token: str | None, session_id: str | None) -> int:
    url = url or os.environ.get(URL_ENV) or DEFAULT_URL
    token = token or os.environ.get(TOKEN_ENV)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with (
        typed_lines_history(),
        httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=TIMEOUT) as client,
    ):
        return TerminalChat(client, session_id).run()
