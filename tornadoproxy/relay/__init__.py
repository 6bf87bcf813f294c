"""One request against an upstream, from the handler's side: send it, wait for the headers, diagnose
the answer, stream or buffer it to a client side, keep-alives, errors midway, egress marking and token
eviction (service, client, forwarding); and the gateway's own probes of the upstreams (readiness).
Handlers, logins, readiness (and, next, the OpenAI-compatible endpoint) all go through it.
"""
