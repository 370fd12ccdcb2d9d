"""The API reference at /docs (Swagger UI) from assets the package ships: it works on an offline host."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
