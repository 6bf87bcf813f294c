"""Log set-up: JSON (or text) lines on stderr, with the redaction filter on every handler.

The access log is one line per request, written by `AccessLog.write()` from the app's log_function
straight to the log stream: the logging module's per-record work (a LogRecord, the handler lock, the
filter chain, the formatter) cost an eighth of a relayed request. Its fields are bounded values
(route template, not raw path) and every line is scrubbed like every other message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from tornadoproxy.config import LoggingConfig
from tornadoproxy.redact import RedactingFilter, scrub


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
    logging.captureWarnings(True)


class AccessLog:
    """One line per request on the log stream, in the log format, scrubbed."""

    def __init__(self) -> None:
        self._enabled = False
        self._json = True
        self._literals: frozenset[str] = frozenset()
        self._stream: TextIO = sys.stderr
        self._second = -1
        self._stamp = ""

    def configure(self, config: LoggingConfig, secrets: frozenset[str] = frozenset()) -> None:
        self._enabled = config.access_log
        self._json = config.format == "json"
        self._literals = frozenset(s for s in secrets if len(s) >= 4)
        self._stream = sys.stderr

    @property
    def enabled(self) -> bool:
        return self._enabled

    def write(self, fields: dict[str, Any]) -> None:
        if not self._enabled:
            return
        now = time.time()
        if int(now) != self._second:  # the date part is formatted once a second
            self._second = int(now)
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        stamp = f"{self._stamp}.{int(now % 1 * 1000):03d}Z"
        if self._json:
            body = json.dumps(fields, separators=(",", ":"), default=str)
            head = f'{{"time":"{stamp}","level":"info","logger":"tornadoproxy.access","message":"request",'
            line = head + body[1:]
        else:
            line = f"{stamp} INFO tornadoproxy.access: request " + " ".join(
                f"{k}={v}" for k, v in fields.items()
            )
        try:
            self._stream.write(scrub(line, self._literals) + "\n")
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not fail the request


def _iso_time(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"
