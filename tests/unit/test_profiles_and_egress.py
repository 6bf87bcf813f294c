"""Client profiles and egress proxies produce complete curl option lists and ordered headers."""

from __future__ import annotations

from urllib.parse import quote

import pycurl
import pytest

from tests.secrets_used import PROXY_PASSWORD
from tornadoproxy.egress import DIRECT, EgressProxy, masked_url
from tornadoproxy.profiles import builtin_profiles, supported_encodings


def test_profile_merges_request_headers_into_its_order() -> None:
    chrome = builtin_profiles()["chrome"]
    lines = chrome.header_lines(
        [("Content-Type", "application/json"), ("Authorization", "Bearer t"), ("OpenAI-Beta", "x")],
        "https://chatgpt.com",
    )
    names = [line.split(b":")[0].lower() for line in lines]
    assert names.index(b"authorization") < names.index(b"user-agent") < names.index(b"content-type")
    assert names.index(b"content-type") < names.index(b"accept") < names.index(b"origin")
    assert b"origin: https://chatgpt.com" in lines
    assert b"referer: https://chatgpt.com/" in lines
    assert names[-2:] == [b"openai-beta", b"expect"]  # extras follow, then curl's Expect is suppressed


def test_request_value_replaces_profile_value_in_place() -> None:
    plain = builtin_profiles()["plain"]
    lines = plain.header_lines([("Accept", "text/event-stream")], "https://api.openai.com")
    assert lines[1] == b"Accept: text/event-stream"
    assert b"Content-Type:" in lines  # curl's default form type is suppressed


def test_slots_stay_empty_without_request_header() -> None:
    okhttp = builtin_profiles()["okhttp"]
    lines = okhttp.header_lines([], "https://chatgpt.com")
    assert not any(line.lower().startswith(b"authorization") for line in lines)
    assert b"Accept:" in lines


@pytest.mark.parametrize("name", sorted(builtin_profiles()))
def test_profile_options_are_complete_and_advertise_only_decodable_codings(name: str) -> None:
    profile = builtin_profiles()[name]
    options = dict(profile.curl_options())
    for option in (
        pycurl.HTTP_VERSION,
        pycurl.SSL_CIPHER_LIST,
        pycurl.TLS13_CIPHERS,
        pycurl.SSL_EC_CURVES,
        pycurl.SSL_ENABLE_ALPN,
        pycurl.SSLVERSION,
        pycurl.ACCEPT_ENCODING,
    ):
        assert option in options
    encodings = [
        line for line in profile.header_lines([], "https://x") if line.lower().startswith(b"accept-encoding")
    ]
    for coding in encodings[0].split(b":", 1)[1].decode().split(","):
        assert coding.strip() in supported_encodings()
    curl = pycurl.Curl()
    for option, value in profile.curl_options():
        curl.setopt(option, value)  # every value is one libcurl accepts
    curl.close()


def test_egress_proxy_parsing_and_masking() -> None:
    url = f"socks5h://user%40corp:{quote(PROXY_PASSWORD, safe='')}@127.0.0.1:1080"
    proxy = EgressProxy.parse(url)
    assert proxy.password is not None and proxy.password.reveal() == PROXY_PASSWORD
    assert proxy.username is not None and proxy.username.reveal() == "user@corp"
    assert proxy.label == "socks5h://***@127.0.0.1:1080"
    assert PROXY_PASSWORD not in repr(proxy)
    options = dict(proxy.curl_options())
    assert options[pycurl.PROXY] == "127.0.0.1:1080"
    assert options[pycurl.PROXYTYPE] == pycurl.PROXYTYPE_SOCKS5_HOSTNAME
    assert options[pycurl.PROXYPASSWORD] == PROXY_PASSWORD
    assert masked_url(url) == "socks5h://***@127.0.0.1:1080"


def test_direct_clears_every_proxy_option() -> None:
    assert EgressProxy.parse("") is DIRECT and EgressProxy.parse("direct") is DIRECT
    options = dict(DIRECT.curl_options())
    assert options[pycurl.PROXY] == "" and options[pycurl.PROXYPASSWORD] is None
    http = dict(EgressProxy.parse("http://127.0.0.1:3128").curl_options())
    assert set(options) <= set(http)  # whatever a proxy sets, direct resets
