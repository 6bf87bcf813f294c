"""Configuration: every bad file stops the start with the key path; the environment wins."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.harness import ROOT, run_until_exit
from tornadoproxy.config.options import describe, describe_records
from tornadoproxy.config.schema import Config, ConfigError, load_config


def load(tmp_path: Path, data: object, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(str(path), environ or {})


def test_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config.server.port == 8080
    assert config.upstreams.platform == "https://api.openai.com"
    assert config.egress.proxy == ""
    assert config.server.max_body_size <= 100 * 1024 * 1024


def test_values_are_read_and_frozen(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {"server": {"port": 9000, "cors_origins": ["https://a.example"]}, "fetch": {"connect_timeout": 3}},
    )
    assert config.server.port == 9000
    assert config.server.cors_origins == ("https://a.example",)
    assert config.fetch.connect_timeout == 3.0
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"sever": {}}, "sever: unknown key"),
        ({"server": {"port": "abc"}}, "server.port: must be an integer"),
        ({"server": {"port": 70000}}, "server.port: must be between 1 and 65535"),
        ({"server": {"port": 0}}, "server.port: must be between 1 and 65535"),
        ({"server": {"port": True}}, "server.port: must be an integer"),
        ({"server": []}, "server: must be a mapping"),
        ({"upstreams": {"platform": "ftp://x"}}, "upstreams.platform: must be an http:// or https:// URL"),
        ({"upstreams": {"chatgpt": "chatgpt.com"}}, "upstreams.chatgpt: must be an http:// or https:// URL"),
        ({"egress": {"proxy": "socks4://127.0.0.1:1080"}}, "egress.proxy: must use one of the schemes"),
        ({"egress": {"proxy": "http://127.0.0.1"}}, "egress.proxy: must name a host and a port"),
        ({"logging": {"format": "xml"}}, "logging.format: must be one of json, text"),
        ({"logging": {"level": "LOUD"}}, "logging.level: must be one of"),
        ({"server": {"cors_origins": "*"}}, "server.cors_origins: must be a list"),
        ({"server": {"trusted_proxies": ["10.0.0.0/8", "nope"]}}, "server.trusted_proxies: 'nope' is not"),
        ({"fetch": {"idle_timeout": 1.5}}, "fetch.idle_timeout: must be an integer"),
        ([1, 2], "(top level): must be a mapping"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, data)
    assert str(raised.value).startswith(message), str(raised.value)


def test_bad_proxy_value_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, {"egress": {"proxy": "socks4://user:hunter2secret@127.0.0.1:1080"}})
    assert "hunter2secret" not in str(raised.value)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    data = {"server": {"port": 9000}, "egress": {"proxy": "http://127.0.0.1:3128"}}
    assert load(tmp_path, data, {"PORT": "9100"}).server.port == 9100
    assert load(tmp_path, data, {"GO_CHATGPT_API_PORT": "9200", "PORT": "9100"}).server.port == 9200
    config = load(tmp_path, data, {"PROXY": "socks5h://127.0.0.1:1080"})
    assert config.egress.proxy == "socks5h://127.0.0.1:1080"
    config = load(
        tmp_path, data, {"GO_CHATGPT_API_PROXY": "socks5://127.0.0.1:1", "PROXY": "http://127.0.0.1:2"}
    )
    assert config.egress.proxy == "socks5://127.0.0.1:1"
    with pytest.raises(ConfigError, match=r"^PORT \(server.port\): must be an integer"):
        load(tmp_path, data, {"PORT": "eighty"})
    with pytest.raises(ConfigError, match=r"^server.port: must be between"):
        load(tmp_path, data, {"PORT": "99999"})


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"), {})
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(broken), {})


def test_shipped_config_lists_every_key_with_its_default() -> None:
    shipped = yaml.safe_load((ROOT / "conf" / "tornadoproxy.yaml").read_text())
    flat = {}
    for section, values in shipped.items():
        if not isinstance(values, dict):  # a list of records (accounts): empty by default
            flat[section] = values
            continue
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    documented = {path: default for path, default, _ in describe(Config)}
    assert set(flat) == set(documented)
    for path, default in documented.items():
        value = flat[path]
        value = tuple(value) if isinstance(value, list) else value
        value = dict(value) if isinstance(value, dict) else value
        expected = dict(default) if hasattr(default, "items") else default
        assert value == expected, path
    assert load_config(str(ROOT / "conf" / "tornadoproxy.yaml"), {}) == Config()


def test_every_key_has_a_comment_in_the_shipped_config() -> None:
    lines = (ROOT / "conf" / "tornadoproxy.yaml").read_text().splitlines()
    for path, _, _ in describe(Config):
        if "." not in path:  # a list of records: its keys are listed in the comment above it
            index = lines.index(f"{path}: []")
            for record_path, _, _ in describe_records(Config):
                key = record_path.split("[].", 1)[1]
                assert any(line.startswith(f"#   {key}:") for line in lines[:index]), record_path
            assert lines[index - 1].strip().startswith("#"), f"{path} has no comment above it"
            continue
        section, key = path.split(".", 1)
        start = lines.index(f"{section}:")
        index = next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {key}:"))
        assert lines[index - 1].strip().startswith("#"), f"{path} has no comment above it"


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [("server:\n  port: 123456\n", "server.port"), ("nope: 1\n", "nope: unknown key")],
)
def test_bad_config_stops_the_process_with_one_line(tmp_path: Path, yaml_text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    result = run_until_exit(path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"egress": {"proxy": ["socks5h://127.0.0.1:1", "direct"]}}, "egress.proxy: entry 1: a list holds"),
        ({"egress": {"chatgpt": []}}, "egress.chatgpt: must not be an empty list"),
        ({"egress": {"auth": {"a": 1}}}, "egress.auth: must be a string or a list"),
        (
            {"egress": {"platform": ["http://127.0.0.1:1", "http://127.0.0.1:1"]}},
            "egress.platform: entry 1 repeats",
        ),
        ({"egress": {"proxy": "socks5h://u:p/w@127.0.0.1:1"}}, "egress.proxy: is not a valid proxy URL"),
        ({"egress": {"proxy": "socks5h://u:p%zz@127.0.0.1:1"}}, "egress.proxy: has a malformed %-escape"),
        ({"egress": {"proxy": "http://a%3Ab:p@127.0.0.1:1"}}, "egress.proxy: has a ':' in its user name"),
        ({"egress": {"proxy": "socks5h://127.0.0.1:1/path"}}, "egress.proxy: must be scheme://"),
        ({"egress": {"cooldown": 0}}, "egress.cooldown: must be between"),
        ({"fetch": {"ca_file": "/nonexistent/ca.pem"}}, "fetch.ca_file: must be a readable file"),
        ({"profiles": {"custom": {"Bad Name": {}}}}, "profiles.custom: 'Bad Name' must be a profile name"),
        (
            {"profiles": {"custom": {"x": {"http_version": 3}}}},
            "profiles.custom.x.http_version: must be one of",
        ),
        (
            {"profiles": {"custom": {"x": {"headers": ["No Colon"]}}}},
            "profiles.custom.x.headers: entry 0 must be",
        ),
        (
            {"profiles": {"custom": {"x": {"headers": ["A: 1", "a: 2"]}}}},
            "profiles.custom.x.headers: entry 1 names",
        ),
        ({"profiles": {"custom": {"x": {"colour": 1}}}}, "profiles.custom.x.colour: unknown key"),
    ],
)
def test_bad_egress_profile_and_fetch_values_name_the_key(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, data)
    assert str(raised.value).startswith(message), str(raised.value)


def test_egress_lists_overrides_and_credentials(tmp_path: Path) -> None:
    from tests.secrets_used import PROXY_PASSWORD
    from tornadoproxy.process.wiring import build_routes, config_secrets

    secret_url = f"socks5h://us%40r:{quote(PROXY_PASSWORD, safe='')}@127.0.0.1:1080"
    config = load(
        tmp_path,
        {
            "egress": {
                "proxy": [secret_url, "http://127.0.0.1:3128"],
                "chatgpt": "direct",
                "platform": "socks5://127.0.0.1:1081",
            }
        },
    )
    routes = build_routes(config)
    assert [p.label for p in routes["auth"].proxies] == [
        "socks5h://***@127.0.0.1:1080",
        "http://127.0.0.1:3128",
    ]
    assert routes["platform_web"].proxies == routes["auth"].proxies
    assert [p.label for p in routes["chatgpt"].proxies] == ["direct"]
    assert [p.label for p in routes["platform"].proxies] == ["socks5://127.0.0.1:1081"]
    assert config_secrets(config) == {"us@r", PROXY_PASSWORD}
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, {"egress": {"proxy": secret_url.replace("socks5h", "socks4")}})
    assert PROXY_PASSWORD not in str(raised.value) and "us%40r" not in str(raised.value)


def test_custom_profiles_are_derived_and_checked_by_libcurl(tmp_path: Path) -> None:
    from tornadoproxy.process.wiring import build_routes

    custom = {
        "mine": {
            "base": "okhttp",
            "headers": ["User-Agent: Mine/1", "Authorization:"],
            "http_version": "1.1",
        },
        "yours": {"base": "mine", "curves": "X25519"},
        "browser": {"base": "chrome", "headers": ["user-agent: Mine/2", "authorization:"]},
        "fox": {"base": "browser", "target": "firefox153"},
    }
    config = load(tmp_path, {"profiles": {"chatgpt": "yours", "auth": "yours", "custom": custom}})
    profile = build_routes(config)["chatgpt"].profile
    assert profile.name == "yours" and profile.curves == "X25519" and profile.http_version == "1.1"
    assert profile.headers == (("User-Agent", "Mine/1"), ("Authorization", None))
    assert profile.ciphers.startswith("ECDHE-ECDSA-AES128-GCM-SHA256")  # from okhttp, two levels up
    assert profile.engine == "pycurl"
    config = load(tmp_path, {"profiles": {"chatgpt": "browser", "auth": "fox", "custom": custom}})
    routes = build_routes(config)
    browser, fox = routes["chatgpt"].profile, routes["auth"].profile
    assert browser.engine == "curl_cffi" and browser.target == "chrome152" and browser.stream_weight == 220
    assert fox.target == "firefox153" and fox.stream_weight == 0  # a new target drops chrome's weight
    assert fox.headers == (("user-agent", "Mine/2"), ("authorization", None))
    bad = [
        ({"x": {"curves": "X25519:no-such-curve"}}, "profiles.custom.x: failed setting curves list"),
        ({"x": {"tls13_ciphers": "TLS_NOPE"}}, "profiles.custom.x: failed setting TLS 1.3 cipher suite"),
        ({"x": {"ciphers": "NOPE-CIPHER"}}, "profiles.custom.x: failed setting cipher list"),
        ({"x": {"signature_algorithms": "nope"}}, "profiles.custom.x: failed setting signature algorithms"),
        ({"x": {"base": "okhttp", "alpn": False}}, "profiles.custom.x: http_version 2 needs alpn"),
        ({"x": {"headers": ["Accept-Encoding: zstd"]}}, "profiles.custom.x: Accept-Encoding names 'zstd'"),
        ({"x": {"base": "y"}, "y": {"base": "x"}}, "profiles.custom."),
        ({"x": {"base": "nope"}}, "profiles.custom.x.base: unknown profile 'nope'"),
        (
            {"x": {"base": "chrome", "curves": "X25519"}},
            "profiles.custom.x.curves: applies to pycurl profiles",
        ),
        ({"x": {"target": "chrome1"}}, "profiles.custom.x: target 'chrome1' is not one curl_cffi offers"),
        ({"x": {"ja3": "771,1,2"}}, "profiles.custom.x: ja3 must have five comma-separated fields"),
        ({"x": {"target": "chrome152", "ja3": "771,4865,0,29,0"}}, "profiles.custom.x: give either target"),
        ({"x": {"akamai": "1:1|0|0|m,a,s,p"}}, "profiles.custom.x: akamai needs ja3"),
    ]
    for profiles, message in bad:
        with pytest.raises(ConfigError) as raised:
            build_routes(load(tmp_path, {"profiles": {"custom": profiles}}))
        assert str(raised.value).startswith(message), str(raised.value)
    # The ChatGPT login carries cookies between the chatgpt and auth hosts: one engine for both.
    with pytest.raises(ConfigError) as raised:
        build_routes(load(tmp_path, {"profiles": {"chatgpt": "okhttp", "auth": "chrome"}}))
    assert str(raised.value).startswith("profiles.auth: 'chrome' runs on curl_cffi and profiles.chatgpt")


def test_the_restart_only_options_are_those_declared_so() -> None:
    from tornadoproxy.config.options import restart_only
    from tornadoproxy.process.runtime import RESTART_ONLY

    declared = restart_only(Config)
    assert RESTART_ONLY == tuple(declared)
    assert {"server.port", "server.workers", "fetch.max_clients", "tokens.store", "accounts"} <= set(declared)
    assert {"egress.proxy", "pool.queue_size", "logins.failure_memory"} <= set(declared)
    reloadable = {"fetch.idle_timeout", "server.body_timeout", "readiness.interval", "logins.timeout"}
    assert not reloadable & set(declared)
    assert "profiles.chatgpt" not in declared and "access.client_keys" not in declared
