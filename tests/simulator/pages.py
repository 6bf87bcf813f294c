"""The HTML pages upstreams answer with when Cloudflare or a region rule stands in the way.

Shapes follow docs/upstream-chatgpt.md ("Errors"); each helper returns a scripted answer for
`Simulator.script()`.
"""

from __future__ import annotations

from typing import Any

CHALLENGE_HTML = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"><meta name="robots" content="noindex,nofollow">
</head><body><div class="main-wrapper" role="main"><div class="main-content"><h1 class="zone-name-title h1">
chatgpt.com</h1><h2 class="h2" id="challenge-running">Checking if the site connection is secure</h2>
<noscript><div id="challenge-error-title">Enable JavaScript and cookies to continue</div></noscript></div></div>
<script>(function(){window._cf_chl_opt={cvId: '3',cZone: "chatgpt.com",cType: 'managed'};var cpo=document.createElement('script');
cpo.src='/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1?ray=8a1b2c3d4e5f6a7b';
document.getElementsByTagName('head')[0].appendChild(cpo);}());</script></body></html>
"""

BLOCK_HTML = """<!DOCTYPE html>
<html class="no-js" lang="en-US"><head><title>Access denied | chatgpt.com used Cloudflare to restrict access</title>
<meta charset="UTF-8" /></head><body><div id="cf-wrapper"><div id="cf-error-details" class="p-0">
<header class="mx-auto pt-10"><h1 class="inline-block sm:block sm:mb-2 font-light text-60 text-black-dark">
<span class="inline-block">Access denied</span><span class="code-label">Error code 1020</span></h1></header>
<section class="w-240 lg:w-full mx-auto mb-8 lg:px-8"><p>You do not have access to chatgpt.com.</p>
<p>The site owner may have set restrictions that prevent you from accessing the site.</p></section>
<div class="cf-error-footer">Ray ID: <strong>8a1b2c3d4e5f6a7b</strong></div></div></div></body></html>
"""

ATTENTION_HTML = """<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head>
<body><div id="cf-wrapper"><h1 data-translate="block_headline">Sorry, you have been blocked</h1>
<h2 class="cf-subheadline">You are unable to access api.openai.com</h2></div></body></html>
"""

REGION_HTML = """<!DOCTYPE html><html><head><title>Unable to load site</title></head><body>
<h1>Unable to load site</h1><p>OpenAI's services are not available in your country.</p></body></html>
"""

OUTAGE_HTML = """<html><head><title>502 Bad Gateway</title></head>
<body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>
"""

_HTML = ["Content-Type", "text/html; charset=UTF-8"]


def challenge(status: int = 403, header: bool = True) -> dict[str, Any]:
    headers = [_HTML, ["cf-ray", "8a1b2c3d4e5f6a7b-FRA"]]
    if header:
        headers.append(["cf-mitigated", "challenge"])
    return {"status": status, "headers": headers, "body": CHALLENGE_HTML}


def block() -> dict[str, Any]:
    return {"status": 403, "headers": [_HTML], "body": BLOCK_HTML}


def attention() -> dict[str, Any]:
    return {"status": 403, "headers": [_HTML], "body": ATTENTION_HTML}


def region_html() -> dict[str, Any]:
    return {"status": 403, "headers": [_HTML], "body": REGION_HTML}


def outage(status: int = 502) -> dict[str, Any]:
    return {"status": status, "headers": [_HTML], "body": OUTAGE_HTML}


def chatgpt_region_json() -> dict[str, Any]:
    detail = {"code": "unsupported_country", "message": "Unable to load site"}
    return {"status": 403, "headers": [["Content-Type", "application/json"]], "json": {"detail": detail}}


def platform_region_json() -> dict[str, Any]:
    error = {
        "message": "Country, region, or territory not supported",
        "type": "request_forbidden",
        "param": None,
        "code": "unsupported_country_region_territory",
    }
    return {"status": 403, "headers": [["Content-Type", "application/json"]], "json": {"error": error}}
