"""A program in a pseudo-terminal, driven as a person at a keyboard drives it.

Only the standard library (pty, os, select): the program is the session leader of a new
pseudo-terminal, so a typed Ctrl-C (\\x03) reaches it as SIGINT through the terminal's line
discipline, exactly as in a real terminal, and readline sees a real tty. What the program
writes is kept whole; `expect` waits for a pattern in what came after the previous match, as
pexpect does. The text it searches has colours and cursor moves removed and line ends as
"\\n"; the terminal's own echo of a Ctrl-C ("^C") stays, since a person sees it too.
"""

import contextlib
import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

CTRL_C, CTRL_D = "\x03", "\x04"
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r(?!\n)")  # CSI sequences, bare \r


class TerminalTimeout(AssertionError):
    pass


class Terminal:
    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        *,
        columns: int = 500,  # wide, so readline never wraps a long typed line
        rows: int = 50,
    ) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: only what must run before exec
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
                if cwd is not None:
                    os.chdir(cwd)
                os.execve(argv[0], list(argv), dict(env))  # noqa: S606 (the test's own argv)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = b""  # everything the program wrote
        self._searched = 0  # where in text the next expect starts
        self.exit_status: int | None = None

    @property
    def text(self) -> str:
        return _CONTROL.sub("", self.raw.decode("utf-8", errors="replace").replace("\r\n", "\n"))

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def send_line(self, line: str) -> None:
        self.send(line + "\r")  # Enter

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first match of `pattern` after the previous match, waiting up to timeout."""
        compiled = re.compile(pattern, re.DOTALL)
        deadline = time.monotonic() + timeout
        while True:
            match = compiled.search(self.text, self._searched)
            if match is not None:
                self._searched = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                seen, after = self.text[: self._searched], self.text[self._searched :]
                raise TerminalTimeout(
                    f"{pattern!r} not seen within {timeout} s ({self._state()}); "
                    f"up to the last match:\n{seen[-2000:]!r}\nafter it:\n{after[-2000:]!r}"
                )

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Read to the program's end; its exit status (-N for a signal)."""
        deadline = time.monotonic() + timeout
        while self._read(max(deadline - time.monotonic(), 0.0)):
            pass
        while self.exit_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise TerminalTimeout(f"still running after {timeout} s:\n{self.text[-3000:]!r}")
            else:
                time.sleep(0.02)
        return self.exit_status

    def _read(self, timeout: float) -> bool:
        """Waits up to timeout for output; False at the end of it (or of the program)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError as error:  # Linux says EIO once the program's side is closed
            if error.errno != errno.EIO:
                raise
            return False
        self.raw += chunk
        return bool(chunk)

    def _state(self) -> str:
        if self.exit_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
        return "running" if self.exit_status is None else f"exited with {self.exit_status}"

    def close(self) -> None:
        if self.exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            self.exit_status = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
