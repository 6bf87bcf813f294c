"""LeanRequestHandler: tornado's RequestHandler without the per-request work the gateway never uses.

Every request builds a handler, and tornado's constructor pays for features no handler here has:
a template namespace (`ui`, with its module namespace object) and, in `clear()`, a header map
built through the validating `update()` path, a `Server` header that our handlers remove again,
and a `Date` header formatted afresh each time. The lean versions set the same state (the same
headers, in the same order, the same status) at a fraction of the cost: the `Date` text is
formatted once per second.

Limits: no template rendering (`render()`, `self.ui`), which no handler of the gateway uses. The
private attributes set here are those of tornado 6.6's RequestHandler and HTTPHeaders (setup.py
pins tornado to 6.6.x); tests/unit/test_lean_handler.py compares the state with tornado's own.
"""

from __future__ import annotations

import time
from typing import Any

from tornado.httputil import HTTPHeaders, HTTPServerRequest, format_timestamp
from tornado.web import Application, RequestHandler

# The Content-Type tornado gives every response until a handler sets its own.
_DEFAULT_CONTENT_TYPE = "text/html; charset=UTF-8"


class _HttpDate:
    """The HTTP `Date` value of the current second, formatted once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second, self.text = second, format_timestamp(now)
        return self.text


_DATE = _HttpDate()


class LeanRequestHandler(RequestHandler):
    """RequestHandler with a constructor and `clear()` that skip what the gateway never uses (see the
    module docstring); everything else is tornado's."""

    def __init__(self, application: Application, request: HTTPServerRequest, **kwargs: Any) -> None:
        # tornado's constructor, minus the template namespace.
        self.application = application
        self.request = request
        self._headers_written = False
        self._finished = False
        self._auto_finish = True
        self._prepared_future = None
        self.clear()
        request.connection.set_close_callback(self.on_connection_close)  # type: ignore[union-attr]
        self.initialize(**kwargs)

    def clear(self) -> None:
        """Reset headers and body as tornado does, without its `Server` header (never sent here)."""
        headers = HTTPHeaders()
        headers._as_list = {"Content-Type": [_DEFAULT_CONTENT_TYPE], "Date": [_DATE.now()]}
        self._headers = headers
        self.set_default_headers()
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = "OK"
