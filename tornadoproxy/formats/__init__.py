"""Pure wire formats used on both sides of the gateway: SSE framing (sse) and strict JSON bodies
(bodies). No I/O and nothing of the gateway's own above errors: relay, imitate and web all read and
write these, so they sit below all three.
"""
