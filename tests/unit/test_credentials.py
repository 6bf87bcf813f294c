"""The upstream credential a request carries, and the client address (credentials.py)."""

from __future__ import annotations

import pytest

from tornadoproxy.errors import BadRequest, MissingAuthorization
from tornadoproxy.web.credentials import client_address, upstream_authorization


@pytest.mark.parametrize(
    ("authorization", "x_authorization", "relayed"),
    [
        (["Bearer sk-abc"], [], "Bearer sk-abc"),
        (["bearer   sk-abc "], [], "Bearer sk-abc"),
        (["sk-abc"], [], "Bearer sk-abc"),  # a bare token gets the prefix
        ([], ["eyJ.a.b"], "Bearer eyJ.a.b"),
        (["Bearer sk-abc"], ["Bearer other"], "Bearer sk-abc"),  # Authorization wins
        ([" "], ["sk-x"], "Bearer sk-x"),  # an empty header counts as absent
    ],
)
def test_one_bearer_credential_is_relayed(
    authorization: list[str], x_authorization: list[str], relayed: str
) -> None:
    assert upstream_authorization([authorization, x_authorization]) == relayed


@pytest.mark.parametrize(
    "authorization",
    [
        ["Bearer a", "Bearer b"],  # two headers
        ["Bearer a,Bearer b"],  # tornado's join of two headers, or a list sent as one
        ["Basic dXNlcjpwYXNz"],  # must not become "Bearer Basic ..."
        ["Bearer a b"],
    ],
)
def test_anything_but_one_bearer_credential_is_refused(authorization: list[str]) -> None:
    with pytest.raises(BadRequest) as refused:
        upstream_authorization([authorization, []])
    for value in authorization:
        assert value not in refused.value.message


@pytest.mark.parametrize("authorization", [[], [""], ["Bearer"], ["bearer  "]])
def test_no_token_is_missing_authorization(authorization: list[str]) -> None:
    with pytest.raises(MissingAuthorization):
        upstream_authorization([authorization, []])


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    trusted = ("10.0.0.0/8",)
    assert client_address("10.0.0.5", "1.2.3.4, 10.0.0.9", trusted) == "1.2.3.4"
    assert client_address("8.8.8.8", "1.2.3.4", trusted) == "8.8.8.8"
    assert client_address("10.0.0.5", "10.1.1.1", trusted) == "10.0.0.5"
    assert client_address("10.0.0.5", "1.2.3.4", ()) == "10.0.0.5"
