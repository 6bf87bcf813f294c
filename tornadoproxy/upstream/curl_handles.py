"""One easy handle of the pycurl engine between transfers: what the engine keeps about it, how it is
prepared for a transfer, and what it drops after one.

A handle is reset and given every option the transfer's setup and the profile own (each to its
value or to libcurl's default) unless it last ran the same setup and sent the same way, when only
the request's own options (URL, body, headers, callbacks) are set: that is most requests, a dozen
and a half setopt calls fewer each. A login's handle (cookies) and one whose transfer failed are
reset at once; a reset keeps nothing of ours but the share, detached every time.
(The loop integration and the pool of handles: curl_client.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pycurl

from tornadoproxy.upstream.transport import Setup, Sink, Transfer


class HandleState:
    """What the engine keeps about one easy handle: the sink of its transfer (None while it is
    free) and how it was last prepared (None: fresh or reset). Kept beside the handle, not on it:
    reading an attribute of one's own from a pycurl.Curl goes through an AttributeError inside
    pycurl first (about 4,600 instructions a read)."""

    __slots__ = ("sink", "setup", "method")

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.setup: Setup | None = None
        self.method: tuple[str, bool] | None = None


def prepare(
    curl: pycurl.Curl,
    state: HandleState,
    transfer: Transfer,
    profile_options: Sequence[tuple[int, Any]],
) -> None:
    """Reset the handle and give it the transfer's setup and the profile: every option either
    sets, each to its value or to libcurl's default. A handle that runs the same setup and
    sends the same way next keeps them (only the request's own options change); a login's
    handle (cookies) is reset after it, whatever comes next."""
    if state.method is not None:  # None: fresh or just reset
        curl.reset()
    setup = transfer.setup
    for option, value in setup.options:
        curl.setopt(option, value)
    for option, value in profile_options:
        curl.setopt(option, value)
    if setup.ca_file:  # else the bundle pycurl found at import (re-applied on reset)
        curl.setopt(pycurl.CAINFO, setup.ca_file)
        curl.setopt(pycurl.CAPATH, None)
        curl.setopt(pycurl.PROXY_CAINFO, setup.ca_file)
        curl.setopt(pycurl.PROXY_CAPATH, None)
    # curl_easy_reset keeps a handle's shares and cookies: a handle that served a login would
    # send that login's cookies with the next request it serves. Detaching the share also
    # drops the handle's cookie engine (checked against libcurl 8.23, tests/e2e/test_logins.py).
    curl.setopt(pycurl.SHARE, None)
    reusable = transfer.cookies is None
    state.setup = setup if reusable else None
    state.method = transfer.method


def release(curl: pycurl.Curl, state: HandleState, failed: bool) -> None:
    """Drop what the handle holds of the transfer (the sink's callbacks, the body); after a
    failure or a login it is reset whole, and prepared again by the next transfer."""
    if failed or state.setup is None or state.method is None:
        curl.reset()
        state.setup = state.method = None
        return
    curl.setopt(pycurl.HEADERFUNCTION, None)
    curl.setopt(pycurl.WRITEFUNCTION, None)
    if state.method[1]:
        curl.setopt(pycurl.POSTFIELDS, b"")  # pycurl holds the body it was given until then


def cookie_share() -> pycurl.CurlShare:
    share = pycurl.CurlShare()
    share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_COOKIE)
    return share
