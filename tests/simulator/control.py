"""/__sim__/...: the tests' side door: reset, script answers, release gates, read the journal."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tornado.web import RequestHandler

from tests.simulator.state import Script, State


class ControlHandler(RequestHandler):
    def initialize(self, state: State) -> None:
        self.state = state

    def check_xsrf_cookie(self) -> None:
        return None

    def reply(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))


class ResetHandler(ControlHandler):
    def post(self) -> None:
        self.state.reset()
        self.reply({"ok": True})


class ScriptsHandler(ControlHandler):
    def post(self) -> None:
        spec = json.loads(self.request.body)
        self.state.scripts.append(
            Script(
                family=spec["family"],
                method=spec.get("method", "*"),
                path=spec["path"],
                response=spec["response"],
                times=int(spec.get("times", 1)),
            )
        )
        self.reply({"ok": True})


class GateReleaseHandler(ControlHandler):
    def post(self, name: str) -> None:
        self.state.gate(name).released.set()
        self.reply({"ok": True})


class GateReachedHandler(ControlHandler):
    async def get(self, name: str) -> None:
        timeout = float(self.get_argument("timeout", "10"))
        try:
            await asyncio.wait_for(self.state.gate(name).reached.wait(), timeout)
        except TimeoutError:
            self.reply({"reached": False}, status=408)
            return
        self.reply({"reached": True})


class JournalHandler(ControlHandler):
    def get(self) -> None:
        family = self.get_argument("family", None)
        path = self.get_argument("path", None)
        entries = [
            entry.to_json()
            for entry in self.state.journal
            if (family is None or entry.family == family) and (path is None or entry.path == path)
        ]
        self.reply(entries)

    def delete(self) -> None:
        self.state.journal.clear()
        self.reply({"ok": True})


ROUTES = [
    (r"/__sim__/reset", ResetHandler),
    (r"/__sim__/scripts", ScriptsHandler),
    (r"/__sim__/gates/([^/]+)/release", GateReleaseHandler),
    (r"/__sim__/gates/([^/]+)/reached", GateReachedHandler),
    (r"/__sim__/journal", JournalHandler),
]
