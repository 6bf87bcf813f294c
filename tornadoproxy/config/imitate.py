"""The options of `/imitate/v1/...` (docs/imitate.md): the model map, who may pay, the history
policy, the proof-of-work limits and the web backend paths the answers go through.

Declarations only, with the checks that need them; what the routes do with them is
`tornadoproxy.imitate`'s concern. Everything but the number of proof-of-work workers applies on
reload (SIGHUP).
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tornadoproxy.config.checks import between
from tornadoproxy.config.options import option

# What a gateway without an `imitate` section maps: the configuration contract of docs/imitate.md.
DEFAULT_MODELS: Mapping[str, str] = types.MappingProxyType(
    {
        "gpt-4o": "gpt-4o",
        "gpt-4o-mini": "gpt-4o-mini",
        "gpt-3.5-turbo": "text-davinci-002-render-sha",
    }
)
DEFAULT_MODEL = "auto"
_DIFFICULTY = re.compile(r"[0-9a-f]{1,16}")
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def model_map(value: Mapping[str, str]) -> tuple[str, str] | None:
    for name, slug in value.items():
        if name == "*":
            return f".{name}", "a prefix needs at least one character before the '*'"
        if "*" in name[:-1]:
            return f".{name}", "'*' may only end a name (a prefix)"
        if not _SLUG.fullmatch(slug):
            return f".{name}", "must be a web model slug (letters, digits, . _ : -)"
    return None


def default_slug(value: str) -> str | None:
    if value and not _SLUG.fullmatch(value):
        return 'must be a web model slug (letters, digits, . _ : -), or "" for no default'
    return None


def difficulty(value: str) -> str | None:
    if not _DIFFICULTY.fullmatch(value):
        return "must be 1 to 16 lowercase hexadecimal digits, e.g. 00001f"
    return None


def backend_path(value: str) -> str | None:
    if not value.startswith("/") or any(c in value for c in "?# ") or "//" in value or ".." in value:
        return "must be an absolute path of the web backend, e.g. /backend-api/conversation"
    return None


def hide_path(value: str) -> str | None:
    if value.count("{id}") != 1:
        return "must contain {id} once (where the conversation id goes)"
    return backend_path(value.replace("{id}", "x"))


@dataclass(frozen=True, slots=True)
class ImitateConfig:
    models: Mapping[str, str] = option(
        DEFAULT_MODELS,
        "OpenAI model name -> web model slug, tried in order (a name ending in '*' is a prefix; exact "
        "names win over prefixes); /imitate/v1/models lists the exact names",
        model_map,
    )
    default_model: str = option(
        DEFAULT_MODEL,
        'web model slug for any name imitate.models does not map; "" answers such names 404 model_not_found',
        default_slug,
    )
    access_tokens: bool = option(
        True,
        "a client may bring its own accessToken (Authorization: Bearer eyJ...) and be answered by that "
        "account without the pool; false: only client keys (served by the pool) are accepted",
    )
    history: Literal["disabled", "hide", "keep"] = option(
        "disabled",
        "disabled: conversations are sent with history_and_training_disabled, so they never show in "
        "the account's history; hide: kept out of the history by hiding each one once it completes "
        "(PATCH is_visible false); keep: left in the history",
    )
    proof_max_attempts: int = option(
        2_000_000,
        "hashes one proof of work may take before the attempt fails (502 "
        "upstream_proof_of_work_failed; with the pool the next account is tried)",
        between(1000, 100_000_000),
    )
    proof_hardest_difficulty: str = option(
        "00001f",
        "the hardest proof-of-work difficulty solved (a smaller hex string is harder); a harder one is "
        "refused without hashing",
        difficulty,
    )
    proof_workers: int = option(
        1,
        "processes that solve proofs of work (niced, so that answers keep their CPU); started in the "
        "background at start-up when accounts are configured, else by the first /imitate completion",
        between(1, 64),
        reload=False,
    )
    token_count: Literal["o200k_base", "estimate"] = option(
        "o200k_base",
        "how usage is counted: o200k_base (OpenAI's tokenizer, loaded when the first completion "
        "arrives: about 0.3 s and 80 MB per process) or estimate (about 4 characters a token)",
    )
    sentinel_path: str = option(
        "/backend-api/sentinel/chat-requirements",
        "path of the sentinel's chat requirements on upstreams.chatgpt",
        backend_path,
    )
    conversation_path: str = option(
        "/backend-api/conversation",
        "path where a conversation is posted on upstreams.chatgpt",
        backend_path,
    )
    hide_path: str = option(
        "/backend-api/conversation/{id}",
        "path a conversation is hidden at (history: hide), {id} its id",
        hide_path,
    )
