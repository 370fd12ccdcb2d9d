"""Console sign-in: the session cookie (POST/GET/DELETE /console/api/session)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
