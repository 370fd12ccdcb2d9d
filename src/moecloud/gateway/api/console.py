"""The console's pages and assets at /console, and the API docs at /docs, all served from the package (no CDN)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
