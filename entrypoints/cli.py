"""`chat-service serve`: validate the config, start the embedded Redis once, run uvicorn."""

import argparse
import os
import signal
import sys
from pathlib import Path

import uvicorn

from adapters.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from entrypoints.asgi import configure_logging
from entrypoints.config import CONFIG_ENV, MEMORY_URL, ConfigError, load_settings

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
    return parser


def serve(config: str | None, host: str | None, port: int | None, workers: int) -> int:
    if config:
        os.environ[CONFIG_ENV] = str(Path(config).resolve())  # the workers read it too
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if workers > 1 and settings.redis.url == MEMORY_URL:
        print("config error: [redis] url memory:// keeps one history per process; "
              "use one worker or a shared Redis", file=sys.stderr)  # fmt: skip
        return 2

    # One embedded server for all workers: started here, handed to them as a URL.
    embedded = None
    if not settings.redis.url:
        embedded = EmbeddedRedis(Path(settings.redis.data_dir))
        try:
            os.environ["CHAT_REDIS_URL"] = embedded.start()
        except (EmbeddedRedisError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    # uvicorn re-raises SIGTERM once it has shut down gracefully; by default that would end
    # this process before the embedded Redis is stopped (and saved) below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            "entrypoints.asgi:app",
            host=host or settings.server.host,
            port=port or settings.server.port,
            workers=workers,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    return serve(args.config, args.host, args.port, args.workers)


if __name__ == "__main__":
    sys.exit(main())
