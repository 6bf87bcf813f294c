"""The ChatGPT web backend (`/backend-api/...`) as in shared/spec/upstream-chatgpt.md."""

from __future__ import annotations

from typing import Any

ROUTES: list[tuple[str, Any]] = []
