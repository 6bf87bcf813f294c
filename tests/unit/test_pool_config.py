"""The accounts list and the pool section: every mistake stops the start naming its key path; secrets
come from the file, an environment variable or a file of their own, and never show."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from tests.harness import run_until_exit
from tests.secrets_used import ACCESS_TOKEN, LOGIN_PASSWORD, PROXY_PASSWORD
from tornadoproxy.config.schema import ConfigError, load_config
from tornadoproxy.process.wiring import load
from tornadoproxy.redact import Secret

ALICE = {"name": "alice", "username": "alice@example.com", "password": LOGIN_PASSWORD}
BOB = {"name": "bob", "access_token": ACCESS_TOKEN}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("accounts", "message"),
    [
        ([ALICE, {**BOB, "name": "alice"}], "accounts[1].name: repeats the name of accounts[0]"),
        ([{**ALICE, **BOB}], "accounts[0]: give either username + password or access_token, not both"),
        ([{"name": "x"}], "accounts[0]: needs username + password"),
        ([{"name": "x", "username": "x@example.com"}], "accounts[0].password: is needed with username"),
        ([{"name": "x", "password": "p"}], "accounts[0].username: is needed with a password"),
        (
            [{**ALICE, "password_env": "PW"}],
            "accounts[0].password_env: give only one of password, password_env",
        ),
        ([{"username": "a@b", "password": "p"}], "accounts[0].name: every account needs a name"),
        ([{**BOB, "name": "bob@example.com"}], "accounts[0].name: must be 1-40 letters"),
        (
            [ALICE, {**BOB, "proxy": "socks4://127.0.0.1:1080"}],
            "accounts[1].proxy: must use one of the schemes",
        ),
        ([{**BOB, "concurrency": 0}], "accounts[0].concurrency: must be between 1 and 64"),
        ([{**BOB, "models": ["gpt 4"]}], "accounts[0].models: entry 0 must be a model slug"),
        ([{**BOB, "extra": 1}], "accounts[0].extra: unknown key"),
        ({"name": "alice"}, "accounts: must be a list"),
        ([{**BOB, "access_token": 12}], "accounts[0].access_token: must be a string"),
    ],
)
def test_bad_accounts_name_the_key(tmp_path: Path, accounts: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(str(write(tmp_path, {"accounts": accounts})), {})
    assert str(raised.value).startswith(message), str(raised.value)
    for secret in (LOGIN_PASSWORD, ACCESS_TOKEN, "alice@example.com"):
        assert secret not in str(raised.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"accounts": [{**BOB, "profile": "netscape"}]}, "accounts[0].profile: unknown profile 'netscape'"),
        ({"accounts": [BOB], "server": {"workers": 2}}, "accounts: with server.workers > 1"),
        ({"pool": {"cooldown_base": 60, "cooldown_cap": 10}}, "pool.cooldown_cap: must not be below"),
        ({"pool": {"login_backoff": 60, "login_backoff_cap": 10}}, "pool.login_backoff_cap: must not"),
        ({"pool": {"slot_lease": 1}}, "pool.slot_lease: must be between 2 and 3600"),
        ({"pool": {"queue_size": -1}}, "pool.queue_size: must be between 0"),
        ({"pool": {"serve_chatgpt": True}}, "pool.serve_chatgpt: there are no accounts"),
        (
            {"accounts": [BOB], "pool": {"serve_chatgpt": True}},
            "pool.serve_chatgpt: needs access.client_keys",
        ),
        ({"pool": {"conversation_map_size": 0}}, "pool.conversation_map_size: must be between 1"),
        ({"pool": {"conversation_ttl": 1}}, "pool.conversation_ttl: must be between 60"),
    ],
)
def test_settings_that_do_not_fit_together(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(str(write(tmp_path, extra)), {})
    assert str(raised.value).startswith(message), str(raised.value)


def test_secrets_from_the_environment_or_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text(ACCESS_TOKEN + "\n")
    data = {
        "accounts": [
            {"name": "alice", "username": "alice@example.com", "password_env": "ALICE_PASSWORD"},
            {"name": "bob", "access_token_file": str(secret_file)},
        ]
    }
    config = load_config(str(write(tmp_path, data)), {"ALICE_PASSWORD": LOGIN_PASSWORD})
    alice, bob = config.accounts
    assert alice.password == Secret(LOGIN_PASSWORD) and alice.logs_in
    assert bob.access_token.reveal() == ACCESS_TOKEN and not bob.logs_in  # the newline is not part of it
    assert LOGIN_PASSWORD not in repr(config) and ACCESS_TOKEN not in repr(config)
    assert "alice@example.com" not in repr(config)
    with pytest.raises(ConfigError, match=r"^accounts\[0\].password_env: the environment variable ALICE"):
        load_config(str(write(tmp_path, data)), {})
    secret_file.write_text("")
    with pytest.raises(ConfigError, match=r"^accounts\[1\].access_token_file: the file is empty"):
        load_config(str(write(tmp_path, data)), {"ALICE_PASSWORD": "x"})
    data["accounts"][1]["access_token_file"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"^accounts\[1\].access_token_file: must be a readable file"):
        load_config(str(write(tmp_path, data)), {"ALICE_PASSWORD": "x"})


def test_account_secrets_join_the_redaction_set(tmp_path: Path) -> None:
    proxy = f"socks5h://user:{quote(PROXY_PASSWORD, safe='')}@127.0.0.1:1080"
    data = {"accounts": [ALICE, {**BOB, "proxy": proxy}]}
    _, _, secrets = load(str(write(tmp_path, data)), {})
    assert {LOGIN_PASSWORD, "alice@example.com", ACCESS_TOKEN, PROXY_PASSWORD} <= secrets


def test_a_bad_account_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, {"accounts": [ALICE, {**BOB, "proxy": "ftp://127.0.0.1:21"}]})
    result = run_until_exit(path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "accounts[1].proxy: must use one of the schemes" in lines[0]
    assert ACCESS_TOKEN not in result.stderr and LOGIN_PASSWORD not in result.stderr
