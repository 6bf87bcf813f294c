"""Logins and the tokens they produce: the two upstream login flows (logins, reading their pages in
pages), the token cache (tokens) and its stores (tokenstore), the sealing of cached tokens with the
password (sealing), and the attempt limits (limits). Contract: docs/logins.md.
"""
