"""The chat page: GET / answers its index.html, /page/ serves its scripts and stylesheet.

Plain files from this package, no build step and nothing from another host. Browsers revalidate
them on every load (no-cache), so a page updated with the service is never mixed with old
scripts from a cache.
"""

from pathlib import Path

from litestar import Router, get
from litestar.datastructures import CacheControlHeader
from litestar.response import File
from litestar.static_files import create_static_files_router

PAGE_PATH = "/page"

_FILES = Path(__file__).parent / "page"
_REVALIDATE = CacheControlHeader(no_cache=True)


@get("/", include_in_schema=False, cache_control=_REVALIDATE, sync_to_thread=False)
def chat_page() -> File:
    """The page itself; it talks to the chat routes with the token it asks for."""
    return File(
        _FILES / "index.html",
        filename="index.html",
        content_disposition_type="inline",
        media_type="text/html",
    )


def page_assets() -> Router:
    """The page's modules and stylesheet under PAGE_PATH; no token needed, not in the schema."""
    return create_static_files_router(
        path=PAGE_PATH, directories=[_FILES], name="page-assets", cache_control=_REVALIDATE
    )
