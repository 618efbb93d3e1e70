"""Limits of the HTTP edge, and the words its errors and documents use for them."""

MAX_BODY_BYTES = 1024 * 1024
MAX_BODY = f"{MAX_BODY_BYTES // 2**20} MiB"
