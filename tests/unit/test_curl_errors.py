"""The classification table, fed with what libcurl 8.23 reported against the real proxies
(tests/e2e/test_egress_failures.py checks the same end to end)."""

from __future__ import annotations

import pytest

from tornadoproxy.upstream.curl_errors import CurlFailure, classify_failure
from tornadoproxy.upstream.egress import DIRECT, EgressProxy


def classify(failure: CurlFailure, proxy: str = "socks5h://u:p@127.0.0.1:1080", headers: bool = False):
    return classify_failure(
        failure,
        upstream="chatgpt",
        url="https://chatgpt.com/backend-api/me",
        proxy=EgressProxy.parse(proxy) if proxy else DIRECT,
        headers_complete=headers,
        connect_timeout=10,
        idle_timeout=300,
    )


@pytest.mark.parametrize(
    ("failure", "proxy", "code", "kind"),
    [
        (
            CurlFailure(7, "Failed to connect to x over proxy 127.0.0.1"),
            "",
            "upstream_unreachable",
            "unreachable",
        ),
        (
            CurlFailure(7, "Failed to connect to x over proxy 127.0.0.1"),
            "http://h:3128",
            "egress_proxy_error",
            "proxy_refused",
        ),
        (
            CurlFailure(7, "CONNECT tunnel failed, response 407", 407),
            "http://h:3128",
            "egress_proxy_error",
            "proxy_auth",
        ),
        (
            CurlFailure(7, "CONNECT tunnel failed, response 503", 503),
            "http://h:3128",
            "egress_proxy_error",
            "proxy_error",
        ),
        (
            CurlFailure(97, "User was rejected by the SOCKS5 server (1 2).", 0, 33),
            None,
            "egress_proxy_error",
            "proxy_auth",
        ),
        (
            CurlFailure(97, "Can't complete SOCKS5 connection to chatgpt.com. (1)", 0, 20),
            None,
            "egress_proxy_error",
            "proxy_dns",
        ),
        (
            CurlFailure(97, "Can't complete SOCKS5 connection to chatgpt.com. (1)", 0, 20),
            "socks5://h:1",
            "egress_proxy_error",
            "proxy_error",
        ),
        (
            CurlFailure(6, "Could not resolve host: chatgpt.com"),
            "socks5://h:1",
            "egress_proxy_error",
            "proxy_dns",
        ),
        (CurlFailure(6, "Could not resolve host: chatgpt.com"), "", "upstream_unreachable", "dns"),
        (CurlFailure(5, "Could not resolve proxy: h"), "http://h:3128", "egress_proxy_error", "proxy_dns"),
        (
            CurlFailure(28, "Connection timed out after 10001 milliseconds"),
            None,
            "egress_proxy_error",
            "proxy_timeout",
        ),
        (CurlFailure(28, "Connection timed out after 10001 milliseconds"), "", "upstream_timeout", "timeout"),
        (CurlFailure(56, "Proxy CONNECT aborted"), "http://h:3128", "egress_proxy_error", "proxy_error"),
        (CurlFailure(56, "Recv failure: Connection reset by peer"), None, "upstream_unreachable", "reset"),
        (CurlFailure(60, "SSL certificate problem"), None, "upstream_unreachable", "tls"),
    ],
)
def test_classification(failure: CurlFailure, proxy: str | None, code: str, kind: str) -> None:
    error = classify(failure, proxy) if proxy is not None else classify(failure)
    assert (error.code, error.kind) == (code, kind), error.message
    assert "u:p" not in error.message


def test_after_the_headers_a_timeout_is_the_upstream_idle_timeout() -> None:
    error = classify(CurlFailure(28, "Connection timed out"), headers=True)
    assert (error.code, error.kind, error.status) == ("upstream_timeout", "timeout", 504)
    proxy_error = classify(
        CurlFailure(7, "CONNECT tunnel failed, response 407", 407), "http://h:1", headers=True
    )
    assert proxy_error.code == "upstream_unreachable"
