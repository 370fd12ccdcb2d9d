"""/docs works on a host without internet: everything it loads is served by the gateway itself."""

from __future__ import annotations

import re

import httpx
from harness import Gateway

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def test_docs_loads_only_what_the_gateway_serves(gateway: Gateway) -> None:
    page = httpx.get(gateway.url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "cdn" not in page.text.lower() and "http:" not in page.text and "https:" not in page.text
    assert "<script>" not in page.text  # no inline script: a strict script-src 'self' policy lets the page run
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(urls) == 4
    for url in urls:
        assert url.startswith("/"), url
        response = httpx.get(gateway.url + url)
        assert response.status_code == 200, url
        suffix = url[url.rfind("."):]
        assert response.headers["content-type"].startswith(CONTENT_TYPES[suffix]), url
    init = httpx.get(gateway.url + "/docs/swagger-init.js").text
    assert '"/openapi.json"' in init and "SwaggerUIBundle" in init and "http" not in init
    assert "SwaggerUIBundle" in httpx.get(gateway.url + "/console/vendor/swagger-ui/swagger-ui-bundle.js").text
    assert httpx.get(gateway.url + "/console/vendor/swagger-ui/..%2Fconfig.py").status_code == 404
    assert httpx.get(gateway.url + "/console/vendor/swagger-ui/VERSION").status_code == 404  # only what /docs loads


def test_the_openapi_document_lists_the_console_routes(gateway: Gateway) -> None:
    paths = httpx.get(gateway.url + "/openapi.json").json()["paths"]
    assert {"/admin/gallery", "/admin/operations", "/admin/deployments", "/v1/chat/completions"} <= set(paths)
    assert "/docs" not in paths
