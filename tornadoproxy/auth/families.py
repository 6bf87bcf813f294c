"""How the gateway's messages and logs name the two login flows, by family (the first segment of the
login route: /chatgpt/login, /platform/login)."""

from __future__ import annotations

FLOW_NAMES = {"chatgpt": "ChatGPT login", "platform": "Platform login"}
