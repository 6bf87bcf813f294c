"""The two login flows of shared/spec/upstream-auth.md: the ChatGPT host's /api/auth routes, the Auth0
tenant and the platform web app."""

from __future__ import annotations

from typing import Any

CHATGPT_ROUTES: list[tuple[str, Any]] = []  # /api/auth/... on the ChatGPT host
AUTH_ROUTES: list[tuple[str, Any]] = []  # the Auth0 tenant
PLATFORM_WEB_ROUTES: list[tuple[str, Any]] = []  # platform.openai.com (login callback)
PLATFORM_ROUTES: list[tuple[str, Any]] = []  # /dashboard/onboarding/login on the Platform API host
