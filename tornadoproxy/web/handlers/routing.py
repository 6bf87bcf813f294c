"""Route declarations: a path template (the metrics and log label) and the handler that serves it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tornado.web import RequestHandler

# {path} spans segments (catch-all relays); any other {name} is exactly one segment.
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Route:
    template: str
    handler: type[RequestHandler]

    @property
    def pattern(self) -> str:
        pattern, position = "", 0
        for match in _PLACEHOLDER.finditer(self.template):
            pattern += re.escape(self.template[position : match.start()])
            pattern += ".+" if match.group(1) == "path" else "[^/]+"
            position = match.end()
        return pattern + re.escape(self.template[position:])


def route_specs(
    routes: list[Route], services: Any, **extra: Any
) -> list[tuple[str, type[RequestHandler], dict[str, Any]]]:
    """Tornado URL specs; tornado matches the raw (undecoded) request path against each pattern."""
    return [
        (route.pattern, route.handler, {"services": services, "route": route.template, **extra})
        for route in routes
    ]


def fixed_paths(
    specs: list[tuple[str, type[RequestHandler], dict[str, Any]]],
) -> dict[str, tuple[type[RequestHandler], dict[str, Any]]]:
    """The specs whose path has no placeholder, by that path: found by one lookup instead of
    tornado's pattern after pattern. A path an earlier spec's pattern also matches is left out
    (tornado's first match wins), as is the second of two specs of the same path."""
    fixed: dict[str, tuple[type[RequestHandler], dict[str, Any]]] = {}
    for index, (pattern, handler, kwargs) in enumerate(specs):
        path = kwargs.get("route", "")
        if pattern != re.escape(path) or path in fixed:
            continue
        if not any(re.fullmatch(earlier, path) for earlier, _, _ in specs[:index]):
            fixed[path] = (handler, kwargs)
    return fixed
