"""pycurl client profiles on the wire: a loopback TLS endpoint records each ClientHello and request
and shows that every built-in pycurl profile, and one defined in YAML, is sent as declared, and that
nothing leaks into the next request on a reused curl handle of either engine. (The browser profiles'
fingerprints are checked in test_fingerprints.py.)"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.egress_fixtures import fetch_through
from tests.fingerprints import GREASE
from tests.harness import Gateway, Simulator, request
from tests.secrets_used import API_KEY
from tests.tls_endpoint import ClientHello, TlsEndpoint, Visit, make_ca
from tornadoproxy.upstream.profiles import ClientProfile
from tornadoproxy.upstream.shipped_profiles import builtin_profiles

GROUPS = {
    "X25519MLKEM768": 0x11EC,
    "X25519": 0x001D,
    "P-256": 0x0017,
    "P-384": 0x0018,
    "P-521": 0x0019,
    "ffdhe2048": 0x0100,
    "ffdhe3072": 0x0101,
}
SIGNATURE_ALGORITHMS = {
    "ecdsa_secp256r1_sha256": 0x0403,
    "ecdsa_secp384r1_sha384": 0x0503,
    "ecdsa_secp521r1_sha512": 0x0603,
    "rsa_pss_rsae_sha256": 0x0804,
    "rsa_pss_rsae_sha384": 0x0805,
    "rsa_pss_rsae_sha512": 0x0806,
    "rsa_pkcs1_sha256": 0x0401,
    "rsa_pkcs1_sha384": 0x0501,
    "rsa_pkcs1_sha512": 0x0601,
}
RENEGOTIATION_SCSV = 0x00FF
CUSTOM = {
    "base": "okhttp",
    "headers": ["X-Client: tp-test", "Authorization:", "User-Agent: TestAgent/1.0", "Accept: */*"],
    "http_version": 1.1,  # unquoted in YAML: a number, accepted
    "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
    "tls13_ciphers": "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
    "curves": "P-256:X25519",
    "signature_algorithms": "ecdsa_secp256r1_sha256:rsa_pss_rsae_sha256",
}


def cipher_ids() -> dict[str, int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:@SECLEVEL=0")
    return {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}


def expected_hello(profile: ClientProfile) -> dict[str, object]:
    """What the ClientHello must carry for `profile` (fields the profile leaves to OpenSSL: None)."""
    ids = cipher_ids()
    tls13 = [ids[name] for name in profile.tls13_ciphers.split(":")] if profile.tls13_ciphers else None
    tls12 = [ids[name] for name in profile.ciphers.split(":")] if profile.ciphers else None
    alpn = (("h2", "http/1.1") if profile.http_version == "2" else ("http/1.1",)) if profile.alpn else None
    return {
        "ciphers": None if tls13 is None or tls12 is None else tuple(tls13 + tls12),
        "groups": tuple(GROUPS[g] for g in profile.curves.split(":")) if profile.curves else None,
        "signature_algorithms": tuple(
            SIGNATURE_ALGORITHMS[a] for a in profile.signature_algorithms.split(":")
        )
        if profile.signature_algorithms
        else None,
        "versions": (0x0304, 0x0303) if profile.min_tls == "1.2" else (0x0304,),
        "alpn": alpn,
    }


def check_visit(visit: Visit, profile: ClientProfile) -> None:
    hello: ClientHello = visit.hello
    assert profile.engine == "pycurl", profile.name
    expected = expected_hello(profile)
    ciphers = tuple(c for c in hello.ciphers if c != RENEGOTIATION_SCSV)
    if expected["ciphers"] is not None:
        assert ciphers == expected["ciphers"], profile.name
    for name in ("groups", "signature_algorithms"):
        if expected[name] is not None:
            assert getattr(hello, name) == expected[name], (profile.name, name)
    assert hello.versions == expected["versions"], profile.name
    assert hello.alpn == expected["alpn"], profile.name
    assert visit.request_line.endswith(" HTTP/1.1")
    # The profile's order with the request's Authorization in its slot (or after, if it has none);
    # "Name:" lines only suppress curl's defaults and never reach the wire.
    lines = profile.header_lines([("Authorization", "Bearer x")], "https://127.0.0.1")
    wanted = [line.split(b":")[0].decode().lower() for line in lines if not line.endswith(b":")]
    if "connection" in wanted:  # libcurl merges Connection with its own tokens and writes it last
        wanted = [name for name in wanted if name != "connection"] + ["connection"]
    sent = [name.lower() for name in visit.header_names if name.lower() != "host"]
    assert sent == wanted, (profile.name, sent, wanted)
    user_agent = profile.user_agent
    assert visit.headers.get("user-agent") == user_agent, profile.name


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def endpoint(certificates: tuple[Path, Path, Path]) -> Iterator[TlsEndpoint]:
    _, cert, key = certificates
    server = TlsEndpoint(cert, key)
    yield server
    server.close()


def tls_config(endpoint: TlsEndpoint, ca: Path, **profiles: object) -> dict[str, object]:
    return {
        "upstreams": {"platform": endpoint.url, "chatgpt": endpoint.url, "auth": endpoint.url},
        "fetch": {"ca_file": str(ca), "max_clients": 1},  # one curl handle, reused by every request
        "profiles": profiles,
    }


def test_each_profile_is_sent_as_declared_and_never_leaks_into_the_next_request(
    sim: Simulator, endpoint: TlsEndpoint, certificates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ca = certificates[0]
    profiles = {**builtin_profiles(), "mine": custom_profile()}
    # platform on a pycurl profile, chatgpt on a browser one (curl_cffi), each on its one reused handle
    for platform_profile, chatgpt_profile in [("plain", "chrome"), ("okhttp", "firefox"), ("mine", "safari")]:
        config = tls_config(
            endpoint,
            ca,
            platform=platform_profile,
            chatgpt=chatgpt_profile,
            auth=chatgpt_profile,
            custom={"mine": CUSTOM},
        )
        endpoint.visits.clear()
        calls = [("platform", "/v1/models"), ("chatgpt", "/backend-api/me")] * 2
        outcomes, _ = fetch_through(sim, tmp_path, config, calls)
        assert [o.status for o in outcomes] == [200] * 4, [o.error for o in outcomes]
        assert len(endpoint.visits) == 4
        first, second, third, fourth = endpoint.visits
        check_visit(first, profiles[platform_profile])
        assert second.headers["user-agent"] == profiles[chatgpt_profile].user_agent
        # The same profile again on the same handle: the same choices (a resumed session adds
        # only the pre-shared key; the browser targets permute their extensions, so JA3N).
        for again, before in ((third, first), (fourth, second)):
            # 41: pre_shared_key (resumed); 21: padding, which BoringSSL adds by the hello's length
            assert extensions(again) ^ extensions(before) <= {21, 41}
            assert clean(again.hello.ciphers) == clean(before.hello.ciphers)
            assert clean(again.hello.groups) == clean(before.hello.groups)
            assert again.header_names == before.header_names
            assert again.headers == before.headers


def clean(values: tuple[int, ...]) -> list[int]:
    return [value for value in values if value not in GREASE]


def extensions(visit: Visit) -> set[int]:
    return set(clean(visit.hello.extensions))


def custom_profile() -> ClientProfile:
    from tornadoproxy.upstream.profiles import derive_profile

    changes = {key: value for key, value in CUSTOM.items() if key != "base"}
    changes["http_version"] = "1.1"
    return derive_profile("mine", builtin_profiles()["okhttp"], changes)


def test_the_relay_uses_the_profile_and_the_ca_file(
    sim: Simulator,
    endpoint: TlsEndpoint,
    certificates: tuple[Path, Path, Path],
    make_gateway: Callable[..., Gateway],
    tmp_path: Path,
) -> None:
    ca = certificates[0]
    config = tls_config(endpoint, ca, platform="okhttp")
    gateway = make_gateway({**config, "readiness": {"enabled": False}})  # no probe visits the endpoint
    answer = request("GET", gateway.url + "/platform/v1/models", headers={"Authorization": API_KEY})
    assert answer.status == 200, answer.body
    (visit,) = endpoint.visits
    check_visit(visit, builtin_profiles()["okhttp"])
    assert visit.headers["authorization"] == f"Bearer {API_KEY}"
    # Without the CA file the throwaway CA is not trusted: a TLS error, not a proxy one.
    config = tls_config(endpoint, ca)
    config["fetch"] = {"max_clients": 1}
    (outcome,), _ = fetch_through(sim, tmp_path, config, [("platform", "/v1/models")])
    assert outcome.error is not None and outcome.error.kind == "tls"
    assert "certificate was not trusted (see fetch.ca_file)" in outcome.error.message
