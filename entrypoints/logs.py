"""Logging for every way the service is started (CLI, plain uvicorn), kept free of heavy
imports so that `chat-service serve` reports a config mistake at once."""

import logging


def configure_logging() -> None:
    """Our lines at INFO; httpx's per-request lines off (they would log every provider URL)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("chat").setLevel(logging.INFO)
    for noisy in ("httpx", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
