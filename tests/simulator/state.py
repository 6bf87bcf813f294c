"""The simulator's shared state: the journal of received requests, scripted answers and gates."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JournalEntry:
    """One request the simulator received, as the tests see it through /__sim__/journal."""

    id: int
    family: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    remote_ip: str
    http_version: str
    received_at: float = field(default_factory=time.time)
    peer_closed_at: float | None = None
    completed: bool = False
    scripted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body_b64": base64.b64encode(self.body).decode(),
            "remote_ip": self.remote_ip,
            "http_version": self.http_version,
            "received_at": self.received_at,
            "peer_closed_at": self.peer_closed_at,
            "completed": self.completed,
            "scripted": self.scripted,
        }


@dataclass
class Script:
    """A scripted answer for the next `times` requests matching family, method and path."""

    family: str
    method: str
    path: str
    response: dict[str, Any]
    times: int = 1

    def matches(self, family: str, method: str, path: str) -> bool:
        return (
            self.times != 0
            and self.family == family
            and self.method in (method, "*")
            and (self.path == path or (self.path.endswith("*") and path.startswith(self.path[:-1])))
        )


class Gate:
    """A point in a scripted stream where the simulator holds until the test releases it."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.released = asyncio.Event()


class State:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.journal: list[JournalEntry] = []
        self.scripts: list[Script] = []
        self.gates: dict[str, Gate] = {}
        self.family_data: dict[str, Any] = {}

    def reset(self) -> None:
        self.journal.clear()
        self.scripts.clear()
        for gate in self.gates.values():
            gate.released.set()  # let anything still waiting finish
        self.gates.clear()
        for data in self.family_data.values():
            reset = getattr(data, "reset", None)
            if reset is not None:
                reset()

    def record(self, **fields: Any) -> JournalEntry:
        entry = JournalEntry(id=next(self._ids), **fields)
        self.journal.append(entry)
        return entry

    def take_script(self, family: str, method: str, path: str) -> dict[str, Any] | None:
        for script in self.scripts:
            if script.matches(family, method, path):
                if script.times > 0:
                    script.times -= 1
                return script.response
        return None

    def gate(self, name: str) -> Gate:
        if name not in self.gates:
            self.gates[name] = Gate()
        return self.gates[name]
