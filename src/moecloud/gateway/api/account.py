"""A tenant's own account: balance, holds and keys (/v1/account...), for the console and for scripts."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
