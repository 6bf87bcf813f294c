"""SimHandler: what every simulated endpoint shares: the journal, scripted answers, JSON replies."""

from __future__ import annotations

import json
from typing import Any

from tornado.web import RequestHandler

from tests.simulator.state import JournalEntry, State
from tests.simulator.streams import play


class SimHandler(RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def initialize(self, state: State, family: str) -> None:
        self.state = state
        self.family = family
        self.entry: JournalEntry | None = None

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def check_xsrf_cookie(self) -> None:
        return None

    async def prepare(self) -> None:
        request = self.request
        self.entry = self.state.record(
            family=self.family,
            method=request.method or "",
            path=request.path,
            query=request.query,
            headers=list(request.headers.get_all()),
            body=request.body,
            remote_ip=request.remote_ip or "",
            http_version=request.version,
        )
        script = self.state.take_script(self.family, request.method or "", request.path)
        if script is not None:
            self.entry.scripted = True
            stream = self.detach()
            await play(stream, script, self.state, self.entry)

    def on_finish(self) -> None:
        if self.entry is not None and not self.entry.scripted:
            self.entry.completed = True

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.finish(json.dumps(payload))

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError:
            return None

    def bearer(self) -> str:
        value = self.request.headers.get("Authorization", "")
        return value[7:] if value.startswith("Bearer ") else ""
