"""The console's pages: /console (one HTML shell) and its scripts and styles under /console/static/, all shipped in
the package (``src/moecloud/console/``), so the console works on a host without internet. ``/`` and ``/ui`` lead
there.

Every page is served with a Content-Security-Policy that allows only this gateway's own scripts, styles, images and
connections, no inline script or style attribute, no framing: what a tenant or a model wrote can never run as
script in an admin's browser (the scripts also build the DOM from text nodes, never from HTML strings).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from moecloud.web.errors import ResourceNotFound

router = APIRouter(include_in_schema=False)

CONSOLE = Path(__file__).resolve().parents[2] / "console"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_ASSET_NAME = re.compile(r"^[a-z][a-z0-9_-]*\.(?:js|css|svg)$")
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    # the page and its modules change together with the package: always revalidated (ETag), never stale
    "cache-control": "no-cache",
}


@router.get("/console")
def console_page() -> FileResponse:
    return FileResponse(CONSOLE / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/console/static/{name}")
def console_asset(name: str) -> FileResponse:
    path = CONSOLE / "static" / name
    if not _ASSET_NAME.match(name) or not path.is_file():
        raise ResourceNotFound(f"no console file {name!r}")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)


@router.get("/")
@router.get("/ui")
def to_console() -> RedirectResponse:
    return RedirectResponse("/console", status_code=307)
