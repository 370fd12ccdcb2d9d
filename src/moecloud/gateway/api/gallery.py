"""The gallery (/admin/gallery) and the operations view (/admin/operations): what the fleet serves and how it runs."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
