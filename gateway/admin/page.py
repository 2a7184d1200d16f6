"""The API Keys web page: `/` and its static assets from `gateway/admin/web/` (no build step)."""

from __future__ import annotations

import functools
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from gateway.admin.errors import not_found

ASSET_DIR = "web"  # inside the gateway.admin package; shipped as package data
INDEX = "index.html"
# The page runs only its own files: no inline script or style, no other origin, no framing.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# Asset names are not content-hashed (there is no build step), so browsers revalidate
# every time; the ETag makes that a 304 without a body.
CACHE_CONTROL = "no-cache"
M_NO_ASSET = "no such file"
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its bytes, media type and ETag."""

    body: bytes
    content_type: str
    etag: str


@functools.cache
def load_assets() -> dict[str, Asset]:
    """Read every file of the page's asset directory into memory once (tens of kilobytes)."""
    assets: dict[str, Asset] = {}
    folder = resources.files("gateway.admin").joinpath(ASSET_DIR)
    for entry in folder.iterdir():
        if not entry.is_file() or entry.name.startswith("."):
            continue
        body = entry.read_bytes()
        suffix = "." + entry.name.rpartition(".")[2]
        content_type = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0]
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[entry.name] = Asset(body, content_type or "application/octet-stream", etag)
    return assets


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {
        "Cache-Control": CACHE_CONTROL,
        "ETag": asset.etag,
        "Content-Security-Policy": PAGE_CSP,
    }
    if asset.etag in request.headers.getall("If-None-Match", []):
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if asset.content_type.startswith(("text/", "image/svg")) else None
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset=charset, headers=headers
    )


async def page(request: web.Request) -> web.Response:
    """GET /: the API Keys page (signed out, it shows the sign-in form)."""
    return _answer(request, load_assets()[INDEX])


async def static(request: web.Request) -> web.Response:
    """GET /static/{name}: one of the page's scripts, stylesheets or icons."""
    asset = load_assets().get(request.match_info["name"])
    if asset is None or request.match_info["name"] == INDEX:
        raise not_found(M_NO_ASSET)
    return _answer(request, asset)
