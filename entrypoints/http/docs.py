"""The API docs a person opens in a browser: Swagger UI and ReDoc (the chat page links them).

The docs' scripts and styles come from the service itself (the builds drf-spectacular-sidecar
ships), not from a CDN, so /schema renders with no internet and tells no third party who reads it.
"""

from importlib.util import find_spec
from pathlib import Path

from litestar import Router
from litestar.openapi.plugins import (
    OpenAPIRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.static_files import create_static_files_router

DOCS_PATH = "/schema"
SWAGGER_PATH = "/swagger"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/static/docs"

# Put in each docs page's <head> before anything it loads. The bundles reach for the network on
# their own (ReDoc draws its logo from cdn.redoc.ly; Swagger UI knows an online validator): the
# policy keeps every request on this service. Inline scripts and styles are how both start.
# The empty icon stops the browser asking for /favicon.ico.
_DOCS_HEAD = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'self\'; '
    "script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:\">"
    '<link rel="icon" href="data:,">'
)


def _bundled_assets() -> Path:
    """The sidecar's static folder, located without importing the package: its __init__
    imports Django, which the lock leaves out (only these files are used)."""
    spec = find_spec("drf_spectacular_sidecar")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("drf-spectacular-sidecar is not installed: it ships the docs' assets")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "static" / "drf_spectacular_sidecar"


def docs_assets() -> Router:
    """Swagger UI's and ReDoc's files under ASSETS_PATH; no token needed, not in the schema."""
    return create_static_files_router(
        path=ASSETS_PATH, directories=[_bundled_assets()], name="docs-assets"
    )


def docs_render_plugins() -> list[OpenAPIRenderPlugin]:
    """ReDoc (also at DOCS_PATH itself, as Litestar's default was), Swagger UI, and the YAML
    document; the JSON one is Litestar's own. Elements and RapiDoc are gone: no package here
    ships them, so offline they were blank pages."""
    swagger = f"{ASSETS_PATH}/swagger-ui-dist"
    return [
        RedocRenderPlugin(
            path=REDOC_PATH,
            js_url=f"{ASSETS_PATH}/redoc/bundles/redoc.standalone.js",
            google_fonts=False,
            favicon=_DOCS_HEAD,
        ),
        SwaggerRenderPlugin(
            path=SWAGGER_PATH,
            js_url=f"{swagger}/swagger-ui-bundle.js",
            css_url=f"{swagger}/swagger-ui.css",
            standalone_preset_js_url=f"{swagger}/swagger-ui-standalone-preset.js",
            favicon=_DOCS_HEAD,
        ),
        YamlRenderPlugin(),
    ]
