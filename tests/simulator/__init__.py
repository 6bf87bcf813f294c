"""A loopback simulator of the upstreams in docs/ (Platform API, ChatGPT backend, logins)."""
