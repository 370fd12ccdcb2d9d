"""How moecloud's processes log: one handler on stderr, text or JSON lines, at the configured level.

Lines that other libraries write at INFO but an operator only wants when debugging are demoted to DEBUG:
the HTTP client's (httpx, httpcore: one line per health probe and per forwarded request) and Alembic's
preamble (``Context impl``, ``Will assume ...``), so Alembic speaks at INFO only when a migration runs.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from moecloud.config import LogSettings

ACCESS_LOGGER = "moecloud.access"
_CHATTY = ("httpx", "httpcore")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Demote(logging.Filter):
    """Rewrites chatty INFO lines to DEBUG, then drops what is below the configured level."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and _is_chatter(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self._level


def _is_chatter(record: logging.LogRecord) -> bool:
    if record.name.startswith(_CHATTY):
        return True
    return record.name.startswith("alembic") and not str(record.msg).startswith("Running ")


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the fields an access line carries."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(settings: LogSettings) -> None:
    """Replace the root logger's handlers with one on stderr that follows ``settings``."""
    level = logging.getLevelNamesMapping()[settings.level]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if settings.json_lines else logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(_Demote(level))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
