"""Log set-up: JSON (or text) lines on stderr, with the redaction filter on every handler.

The access log is one line per request, written by `access_line()` from the app's log_function; its
fields are bounded values (route template, not raw path) and are scrubbed like every message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from tornadoproxy.config import LoggingConfig
from tornadoproxy.redact import RedactingFilter

access_log = logging.getLogger("tornadoproxy.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{_iso_time(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_text:
            text += "\n" + record.exc_text
        return text


def configure_logging(config: LoggingConfig, secrets: frozenset[str] = frozenset()) -> None:
    """Route every logger to stderr through the redaction filter; keep curl's DEBUG off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # At DEBUG, tornado.curl_httpclient prints request headers, Bearer tokens included.
    logging.getLogger("tornado.curl_httpclient").setLevel(max(logging.INFO, root.level))
    # The gateway writes its own access line; tornado's would duplicate it.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    access_log.disabled = not config.access_log
    logging.captureWarnings(True)


def access_line(fields: dict[str, Any]) -> None:
    access_log.info("request", extra={"fields": fields})


def _iso_time(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"
