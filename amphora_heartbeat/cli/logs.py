"""Log output of the long-running commands: ``--log-format text|json`` and ``--log-level``.

The library only logs through its loggers (``amphora_heartbeat.*``); the
command line is what sets up the root logger, here, once per process.  In JSON
every record is one line, an object with ``time`` (UTC, ISO 8601), ``level``,
``logger``, ``event``, ``message`` and the record's fields: whatever the call
passed with ``extra=`` (``amphora_id``, ``reason``, ``count``, ...).  A record
without an ``event`` field is named after the function that logged it.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["LEVELS", "JSONFormatter", "configure_logging"]

#: The values of ``--log-level``.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Attributes every LogRecord has: anything else came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    """Format each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as a JSON line (no newline inside: JSON escapes them)."""
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, "event", None) or record.funcName.lstrip("_"),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> logging.Handler:
    """Send every record at ``level`` or above to ``stream`` (stderr) as ``fmt`` (text or json).

    Replaces the root logger's handlers; returns the one installed.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
