"""Log set-up: JSON (or text) lines on stderr, with the redaction filter on every handler.

The access log is one line per request, written by `AccessLog.write()` from the app's log_function
straight to the log stream: the logging module's per-record work (a LogRecord, the handler lock, the
filter chain, the formatter) cost an eighth of a relayed request. Its fields are bounded values
(route template, not raw path) and every line is scrubbed like every other message.
Everything else that would reach stderr on its own goes through the same handler: tornado's and
asyncio's loggers (they propagate to the root), warnings, and uncaught exceptions in the main thread,
in other threads and in finalizers. With several worker processes each line names its worker.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

from tornadoproxy.config.schema import LoggingConfig
from tornadoproxy.redact import RedactingFilter, scrub

_uncaught = logging.getLogger("tornadoproxy.uncaught")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, (worker,) message, then the record's `fields`."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self._worker is not None:
            line["worker"] = self._worker
        line["message"] = record.getMessage()
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = f" worker={worker}" if worker is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        text = (
            f"{_iso_time(record.created)} {record.levelname}{self._worker} {record.name}: "
            f"{record.getMessage()}"
        )
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_text:
            text += "\n" + record.exc_text
        return text


def configure_logging(
    config: LoggingConfig, secrets: frozenset[str] = frozenset(), worker: int | None = None
) -> None:
    """Route every logger to stderr through the redaction filter; keep curl's DEBUG off. `worker`
    (with several worker processes) is written on every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if config.format == "json" else TextFormatter(worker))
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
    # Uncaught exceptions would otherwise be printed raw to stderr, locals and messages included.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable


def _log_uncaught(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    _uncaught.critical("uncaught exception", exc_info=(kind, error, traceback))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        _uncaught.error("uncaught exception in a thread", exc_info=exc_info)


def _log_unraisable(args: Any) -> None:
    if args.exc_value is not None:
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        # The object's qualified name, never its repr (which could show anything it holds).
        where = getattr(args.object, "__qualname__", type(args.object).__name__)
        _uncaught.error("exception ignored in %s", where, exc_info=exc_info)


# json.dumps with arguments builds an encoder per call; the access log's is built once.
_ACCESS_JSON = json.JSONEncoder(separators=(",", ":"), default=str).encode


class AccessLog:
    """One line per request on the log stream, in the log format, scrubbed."""

    def __init__(self) -> None:
        self._enabled = False
        self._json = True
        self._literals: frozenset[str] = frozenset()
        self._stream: TextIO = sys.stderr
        self._second = -1
        self._stamp = ""
        self._worker: int | None = None

    def configure(
        self, config: LoggingConfig, secrets: frozenset[str] = frozenset(), worker: int | None = None
    ) -> None:
        self._worker = worker
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
        if self._worker is not None:
            fields["worker"] = self._worker
        if self._json:
            body = _ACCESS_JSON(fields)
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
