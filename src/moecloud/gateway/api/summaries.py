"""Usage summed per day, model and key, and its CSV export: for admins (/admin/usage/...), tenants (/v1/usage/...)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
