"""The API reference at /docs (Swagger UI) from assets the package ships: it works on an offline host.

The page loads nothing but this gateway's own URLs (the vendored Swagger UI under /console/vendor/swagger-ui/,
``make vendor`` refreshes it, and the app's OpenAPI document), and runs no inline script, so it works under a
``script-src 'self'`` Content-Security-Policy.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from moecloud.web.errors import ResourceNotFound

router = APIRouter(include_in_schema=False)

SWAGGER_UI = Path(__file__).resolve().parents[2] / "console" / "vendor" / "swagger-ui"
_ASSETS = {  # the files `make vendor` keeps, and how they are served
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "LICENSE": "text/plain; charset=utf-8",
}
_ASSET_CACHE = "public, max-age=3600"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>moecloud gateway API</title>
<link rel="stylesheet" href="/console/vendor/swagger-ui/swagger-ui.css">
<link rel="icon" type="image/png" href="/console/vendor/swagger-ui/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/console/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body>
</html>
"""


@router.get("/docs")
def docs() -> HTMLResponse:
    return HTMLResponse(_PAGE)


@router.get("/docs/swagger-init.js")
def swagger_init(request: Request) -> Response:
    """Swagger UI started on this app's OpenAPI document; no validator (it would send the spec to swagger.io)."""
    options = {"url": request.app.openapi_url, "dom_id": "#swagger-ui", "deepLinking": True, "validatorUrl": None,
               "layout": "BaseLayout"}
    script = (f"window.ui = SwaggerUIBundle(Object.assign({json.dumps(options)}, "
              "{presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]}));\n")
    return Response(script, media_type="text/javascript; charset=utf-8", headers={"cache-control": "no-cache"})


@router.get("/console/vendor/swagger-ui/{name}")
def swagger_asset(name: str) -> FileResponse:
    if name not in _ASSETS:
        raise ResourceNotFound(f"no vendored file {name!r}")
    return FileResponse(SWAGGER_UI / name, media_type=_ASSETS[name], headers={"cache-control": _ASSET_CACHE})
