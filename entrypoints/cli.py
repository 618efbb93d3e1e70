"""`chat-service serve`: validate the config, claim the embedded Redis, run uvicorn.
`chat-service chat`: chat with a running service from a terminal."""

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from adapters.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from adapters.prometheus_metrics import for_workers
from entrypoints.config import CONFIG_ENV, MEMORY_URL, ConfigError, load_settings
from entrypoints.logs import configure_logging

GRACEFUL_SHUTDOWN_SECONDS = 30


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--config", help=f"config file (default: ${CONFIG_ENV} or ./config.ini)")
    serve.add_argument("--host", help="overrides [server] host")
    serve.add_argument("--port", type=int, help="overrides [server] port")
    serve.add_argument("--workers", type=_positive, default=1, help="worker processes")
    chat = commands.add_parser("chat", help="chat with a running service in this terminal")
    chat.add_argument("--url", help="the service (default: $CHAT_URL or http://127.0.0.1:8000)")
    chat.add_argument("--token", help="its bearer token (default: $CHAT_TOKEN)")
    chat.add_argument("--session", help="carry on this conversation (default: a new one)")
    return parser


def serve(config: str | None, host: str | None, port: int | None, workers: int) -> int:
    if config:
        os.environ[CONFIG_ENV] = str(Path(config).resolve())  # the workers read it too
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    if workers > 1 and settings.redis.url == MEMORY_URL:
        print("config error: [redis] url memory:// keeps one history per process; "
              "use one worker or a shared Redis", file=sys.stderr)  # fmt: skip
        return 2

    # A terminal closing (SIGHUP) stops the service as SIGTERM does. uvicorn re-raises SIGTERM
    # once it has shut down gracefully; by default that would end this process before it
    # released the embedded Redis below (which waits for its append-only file's fsync).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda *_: signal.raise_signal(signal.SIGTERM))
    # This process is the service's root: it claims the embedded server before any worker
    # starts, so a server that cannot start is one line here; the workers join the claim.
    embedded = None
    if not settings.redis.url:
        embedded = EmbeddedRedis(Path(settings.redis.data_dir))
        try:
            embedded.acquire()
        except (EmbeddedRedisError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    # Every worker counts in one directory, so that one scrape sums them all.
    shared_metrics = for_workers() if workers > 1 and settings.metrics.enabled else None
    try:
        started = _run_uvicorn(host or settings.server.host, port or settings.server.port, workers)
    finally:
        if embedded is not None:
            embedded.release()
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)
    return 0 if started else STARTUP_FAILURE


class _Workers(Multiprocess):
    """uvicorn's worker manager, except that SIGHUP stops the service as SIGTERM does,
    instead of restarting the workers."""

    def handle_hup(self) -> None:
        logging.getLogger("uvicorn.error").info("Received SIGHUP, exiting.")
        self.should_exit.set()


def _run_uvicorn(host: str, port: int, workers: int) -> bool:
    """uvicorn.run() with _Workers for several workers; False if the app did not start."""
    config = uvicorn.Config(
        "entrypoints.asgi:app",
        host=host,
        port=port,
        workers=workers,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        # Our request line (entrypoints/http/request_log.py) replaces uvicorn's access log,
        # and uvicorn's own lines go through our handler, in [log] format.
        access_log=False,
        log_config=None,
    )
    if workers > 1:
        _Workers(config, sockets=[config.bind_socket()]).run()
        return True
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises SIGINT once stopped
        server.run()
    return server.started


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "chat":
        # imported here: readline takes over the terminal, which `serve` has no use for
        from entrypoints.terminal_chat import chat

        return chat(args.url, args.token, args.session)
    configure_logging()
    return serve(args.config, args.host, args.port, args.workers)


if __name__ == "__main__":
    sys.exit(main())
