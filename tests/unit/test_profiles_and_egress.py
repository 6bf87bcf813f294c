"""Client profiles and egress proxies produce complete curl option lists and ordered headers."""

from __future__ import annotations

from urllib.parse import quote

import pycurl
import pytest

from tests.secrets_used import PROXY_PASSWORD
from tornadoproxy.upstream.egress import DIRECT, EgressProxy, masked_url
from tornadoproxy.upstream.fingerprint_options import impersonation_problem, profile_options
from tornadoproxy.upstream.profiles import ClientProfile, profile_problem, supported_encodings
from tornadoproxy.upstream.shipped_profiles import builtin_profiles, chrome_brands


def test_profile_merges_request_headers_into_its_order() -> None:
    chrome = builtin_profiles()["chrome"]
    lines = chrome.header_lines(
        [("Content-Type", "application/json"), ("Authorization", "Bearer t"), ("OpenAI-Beta", "x")],
        "https://chatgpt.com",
    )
    names = [line.split(b":")[0].lower() for line in lines]
    assert names.index(b"authorization") < names.index(b"user-agent") < names.index(b"content-type")
    assert names.index(b"content-type") < names.index(b"accept") < names.index(b"origin")
    assert names[0] == b"sec-ch-ua-platform"
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


PYCURL_PROFILES = sorted(name for name, p in builtin_profiles().items() if p.engine == "pycurl")


@pytest.mark.parametrize("name", PYCURL_PROFILES)
def test_profile_options_are_complete_and_advertise_only_decodable_codings(name: str) -> None:
    profile = builtin_profiles()[name]
    options = dict(profile.pycurl_options())
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
    for option, value in profile.pycurl_options():
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


def test_a_tls_knob_this_pycurl_lacks_is_reported_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    # Debian's pycurl on libcurl 7.88 has no SSL_SIGNATURE_ALGORITHMS constant.
    monkeypatch.delattr(pycurl, "SSL_SIGNATURE_ALGORITHMS")
    okhttp = builtin_profiles()["okhttp"]  # sets no signature algorithms: still usable
    assert profile_problem(okhttp) is None and okhttp.pycurl_options()
    wanting = ClientProfile("mine", (), signature_algorithms="ecdsa_secp256r1_sha256")
    problem = profile_problem(wanting)
    assert problem is not None and "CURLOPT_SSL_SIGNATURE_ALGORITHMS" in problem


def test_browser_profiles_run_on_curl_cffi_and_advertise_what_it_decodes() -> None:
    for name in ("chrome", "firefox", "safari"):
        profile = builtin_profiles()[name]
        assert profile.engine == "curl_cffi" and impersonation_problem(profile) is None
        assert profile_problem(profile) is None
    assert set(supported_encodings("curl_cffi")) == {"gzip", "deflate", "br", "zstd"}


def test_chrome_brands_follow_chromiums_grease_algorithm() -> None:
    # As Chrome 120, 124 and 131 sent them.
    assert chrome_brands(120) == '"Not_A Brand";v="8", "Chromium";v="120", "Google Chrome";v="120"'
    assert chrome_brands(124) == '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"'
    assert chrome_brands(131) == '"Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"'


CHROME_JA3 = (
    "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,"
    "0-23-65281-10-11-35-16-5-13-18-51-45-43-27-17513-21,29-23-24,0"
)
CHROME_AKAMAI = "1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p"


def test_ja3_and_akamai_strings_become_options_or_a_precise_problem() -> None:
    profile = ClientProfile("mine", (), ja3=CHROME_JA3, akamai=CHROME_AKAMAI)
    assert profile.engine == "curl_cffi" and impersonation_problem(profile) is None
    options = dict(profile_options(profile))
    from curl_cffi import CurlOpt

    assert options[CurlOpt.TLS_EXTENSION_ORDER] == "0-23-65281-10-11-35-16-5-13-18-51-45-43-27-17513"
    assert options[CurlOpt.SSL_EC_CURVES] == "X25519:P-256:P-384"
    assert options[CurlOpt.HTTP2_SETTINGS] == "1:65536;2:0;4:6291456;6:262144"
    assert options[CurlOpt.HTTP2_PSEUDO_HEADERS_ORDER] == "masp"
    bad = {
        "771,4865,0": "five comma-separated fields",
        "771,9999,0,29,0": "cipher suite 9999",
        "771,4865,0,12345,0": "group 12345",
    }
    for ja3, words in bad.items():
        problem = impersonation_problem(ClientProfile("mine", (), ja3=ja3))
        assert problem is not None and words in problem, problem
    problem = impersonation_problem(ClientProfile("mine", (), ja3=CHROME_JA3, akamai="1:2|x|0|m,a,s,p"))
    assert problem is not None and "window update" in problem
    assert "not one curl_cffi offers" in str(
        impersonation_problem(ClientProfile("mine", (), target="chrome1"))
    )
