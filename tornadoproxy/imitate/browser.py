"""The browser telemetry a proof-of-work answer carries, built to match the client profile's browser.

The web client's answer is a JSON array of facts about the page: screen size, the date as
`Date.toString()` prints it, the JS heap limit, the attempt counter, the user agent, a script URL
and build id of the web app, languages, a navigator/document/window property, `performance.now()`,
a per-page session id, the CPU count and `performance.timeOrigin`. The upstream does not check the
content, but it should read like the browser the user agent names, so the choices below follow the
user agent's platform. Chromium-based user agents are what the profiles send; others get the same
shape (their real browsers report no heap limit, so that stays Chrome's value).
"""

from __future__ import annotations

import datetime
import random
import re
from dataclasses import dataclass

# Index of the attempt counter in the array: the solver varies only this element.
COUNTER_INDEX = 3
# Chrome's performance.memory.jsHeapSizeLimit on 64-bit desktops.
_CHROME_HEAP_LIMIT = 4294705152
# screen.width + screen.height of common desktop screens, by platform.
_SCREENS = {
    "windows": (3000, 3120, 2800, 3280),  # 1920x1080, 1920x1200, 1536x864 scaled, 2048x1152 scaled
    "mac": (2336, 2612, 2792, 3024),  # 1440x900, 1512x982 (14"), 1728x1117 (16"), 1800x1169
    "linux": (3000, 3120, 4000, 3840),  # 1920x1080, 1920x1200, 2560x1440, 2560x1280
}
_CORES = {"windows": (8, 12, 16), "mac": (8, 10, 12), "linux": (8, 12, 16)}
# Properties the web client samples from Navigator.prototype, document and window; "−" is U+2212,
# the separator it writes between a navigator property and its value.
_NAVIGATOR_KEYS = (
    "cookieEnabled−true",
    "onLine−true",
    "pdfViewerEnabled−true",
    "webdriver−false",
    "maxTouchPoints−0",
    "doNotTrack",
    "vendor−Google Inc.",
    "product−Gecko",
)
_DOCUMENT_KEYS = ("location", "_reactListeningj3rmi50kcy", "__reactContainer$s2oeuiqb9q")
_WINDOW_KEYS = ("onpointerdown", "onbeforetoggle", "__NEXT_DATA__", "webpackChunk_N_E", "ondevicemotion")
_DEFAULT_SCRIPT = "https://cdn.oaistatic.com/_next/static/chunks/webpack-8c8a3a4ad9a13ee7.js"
_DEFAULT_BUILD = "prod-3f9e2b7c1d4a5e6f708192a3b4c5d6e7f8091a2b"


@dataclass(frozen=True, slots=True)
class BrowserTelemetry:
    """One page's telemetry; `values()` is the array a proof of work answers with."""

    user_agent: str
    screen_sum: int
    date_string: str
    heap_limit: int
    script_url: str
    build_id: str
    language: str
    languages: str
    navigator_key: str
    document_key: str
    window_key: str
    performance_now: float
    session_id: str
    cores: int
    time_origin: float

    def values(self, counter: int = 0) -> list[object]:
        return [
            self.screen_sum,
            self.date_string,
            self.heap_limit,
            counter,
            self.user_agent,
            self.script_url,
            self.build_id,
            self.language,
            self.languages,
            # The web client writes the milliseconds spent solving here; a fixed figure keeps the
            # solver pure (the counter alone varies), and the upstream does not check it.
            round(self.performance_now) % 97,
            self.navigator_key,
            self.document_key,
            self.window_key,
            self.performance_now,
            self.session_id,
            "",
            self.cores,
            self.time_origin,
        ]


def platform_of(user_agent: str) -> str:
    """ "windows", "mac" or "linux": what the user agent claims to run on."""
    if "Windows" in user_agent:
        return "windows"
    if re.search(r"Macintosh|Mac OS X", user_agent):
        return "mac"
    return "linux"


def js_date_string(now: datetime.datetime) -> str:
    """`new Date().toString()` in UTC, as a browser set to UTC prints it."""
    utc = now.astimezone(datetime.UTC)
    return utc.strftime("%a %b %d %Y %H:%M:%S") + " GMT+0000 (Coordinated Universal Time)"


def browser_telemetry(
    user_agent: str,
    *,
    session_id: str,
    now: datetime.datetime,
    rng: random.Random,
    script_url: str = _DEFAULT_SCRIPT,
    build_id: str = _DEFAULT_BUILD,
) -> BrowserTelemetry:
    """Telemetry of a page opened a few seconds before `now` in the browser `user_agent` names.

    `session_id` is the page's id (a UUID; the handler may keep one per account, like the device
    id); `rng` picks the screen, CPU count and sampled properties, so a seeded one repeats them.
    """
    platform = platform_of(user_agent)
    performance_now = round(rng.uniform(4000.0, 30000.0), 1)
    return BrowserTelemetry(
        user_agent=user_agent,
        screen_sum=rng.choice(_SCREENS[platform]),
        date_string=js_date_string(now),
        heap_limit=_CHROME_HEAP_LIMIT,
        script_url=script_url,
        build_id=build_id,
        language="en-US",
        languages="en-US,en",
        navigator_key=rng.choice(_NAVIGATOR_KEYS),
        document_key=rng.choice(_DOCUMENT_KEYS),
        window_key=rng.choice(_WINDOW_KEYS),
        performance_now=performance_now,
        session_id=session_id,
        cores=rng.choice(_CORES[platform]),
        time_origin=round(now.timestamp() * 1000 - performance_now, 1),
    )
